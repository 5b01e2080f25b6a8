"""Every field type the schema must describe."""

from typing import Dict, List, Literal, Optional

from pydantic import BaseModel, Field

from inferencesh_ray import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup, File


class Point(BaseModel):
    x: float
    y: float


class Setup(BaseAppSetup):
    size: Literal["small", "large"] = "small"


class Everything(BaseAppInput):
    zeta: str = Field(description="declared first")
    count: int = 3
    ratio: float = 0.5
    flag: bool = False
    image: File = Field(description="a file")
    maybe_image: Optional[File] = None
    images: List[File] = []
    named_images: Dict[str, File] = {}
    color: Literal["red", "green"] = "red"
    points: List[Point] = []
    note: Optional[str] = None
    alpha: int = Field(1, description="declared last")


class Result(BaseAppOutput):
    files: List[File]
    center: Point


class App(BaseApp):
    async def setup(self, config: Setup) -> None:
        self.size = config.size

    async def run(self, input_data: Everything) -> Result:
        """Echo the files back."""
        files = [input_data.image, *input_data.images, *input_data.named_images.values()]
        return Result(files=files, center=Point(x=0, y=0))
