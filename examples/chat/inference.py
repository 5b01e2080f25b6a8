"""Chat vs completion: one small text model, with and without a conversation's state.

What it is: a word n-gram (by default trigram) model, `ngram_model.py`, trained in `setup`
on `corpus.txt` beside this file, one page of text about this framework. It is not a
neural network and understands nothing: it continues from words it has seen, with the
words that followed them on that page. Sampling is seeded, so the same input gives the
same text. It stands in for a real language model to show the two shapes of a text app:

- `completion` is stateless: it continues the prompt, and the same prompt and seed always
  give the same text, on any replica.
- `chat` keeps the conversation in the app instance (`self.history`): call it in a
  session (`"session": "new"`, then the session id) so that every turn reaches the same
  instance. Each reply starts from the most telling word the model knows in your latest
  message, or, when it knows none, in the earlier turns of the conversation.

Outside a session, calls go to whichever replica is free and an instance is shared by
every client that reaches it, so `chat` there is not a private conversation.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from ngram_model import SENTENCE_END, NGramModel, tokenize
from pydantic import BaseModel, Field

from inferencesh_ray import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup, Metadata

CORPUS = Path(__file__).resolve().parent / "corpus.txt"
MAX_HISTORY = 200  # messages kept per conversation; the oldest go first


class AppSetup(BaseAppSetup):
    order: int = Field(3, ge=2, le=5, description="Words of context plus one: 2 is a bigram model, 3 a trigram model")


class Message(BaseModel):
    role: Literal["user", "assistant"] = Field(description="Who said it")
    content: str = Field(description="What was said")


class ChatInput(BaseAppInput):
    message: str = Field(min_length=1, max_length=4000, description="Your next message")
    max_words: int = Field(30, ge=1, le=200, description="Longest reply, in words")
    seed: int = Field(0, description="Seed of the sampling: the same conversation and seed give the same replies")
    reset: bool = Field(False, description="Forget the conversation before this message")


class ChatOutput(BaseAppOutput):
    reply: str = Field(description="The model's answer")
    turn: int = Field(description="How many messages you have sent in this conversation, this one included")
    history: list[Message] = Field(description="The conversation so far, oldest first, this reply last")


class CompletionInput(BaseAppInput):
    prompt: str = Field(min_length=1, max_length=4000, description="The text to continue")
    max_words: int = Field(30, ge=1, le=200, description="Longest continuation, in words")
    seed: int = Field(0, description="Seed of the sampling: the same prompt and seed give the same text")


class CompletionOutput(BaseAppOutput):
    completion: str = Field(description="The continuation alone")
    text: str = Field(description="The prompt followed by its continuation")


class App(BaseApp):
    async def setup(self, config: AppSetup) -> None:
        self.model = NGramModel(CORPUS.read_text(encoding="utf-8"), order=config.order)
        self.history: list[Message] = []
        self.turns = 0  # user messages this conversation; kept apart from history, which is trimmed
        print(f"{config.order}-gram model trained on {sum(self.model.unigrams.values())} tokens of {CORPUS.name}")

    async def unload(self) -> None:
        del self.model
        self.history = []
        self.turns = 0

    def chat(self, input_data: ChatInput, metadata: Metadata) -> ChatOutput:
        """Answer the next message of a conversation; the history stays in this app instance (use a session)."""
        if input_data.reset:
            self.history = []
            self.turns = 0
        self.history.append(Message(role="user", content=input_data.message))
        # counted, not derived from the history: that stops at MAX_HISTORY, and the seed below needs the turn
        self.turns += 1
        turn = self.turns
        topic = self._topic()
        metadata.log(f"turn {turn}: replying from {topic!r}" if topic else f"turn {turn}: no known word, starting fresh")
        rng = random.Random(f"{input_data.seed}|{turn}|{input_data.message}")
        context = [topic] if topic else ["."]
        words = self.model.continue_from(context, rng, input_data.max_words)
        reply = self.model.text(([topic] if topic else []) + words)
        self.history.append(Message(role="assistant", content=reply))
        del self.history[:-MAX_HISTORY]
        return ChatOutput(reply=reply, turn=turn, history=list(self.history))

    def completion(self, input_data: CompletionInput, metadata: Metadata) -> CompletionOutput:
        """Continue a prompt; stateless, so the same prompt and seed give the same text anywhere."""
        rng = random.Random(f"{input_data.seed}|{input_data.prompt}")
        prompt = tokenize(input_data.prompt)
        words = self.model.continue_from(prompt, rng, input_data.max_words)
        completion = self.model.text(words, sentence_start=not prompt or prompt[-1] in SENTENCE_END)
        metadata.log(f"continued with {len(completion.split())} word(s)")
        start = input_data.prompt.rstrip()
        joiner = "" if not start or not words or not words[0][0].isalnum() else " "  # no space before nothing
        return CompletionOutput(completion=completion, text=start + joiner + completion)

    def _topic(self) -> str | None:
        """The rarest word the model knows in the latest message, else in the earlier user turns."""
        for message in reversed(self.history):
            if message.role == "user" and (word := self.model.rarest_known(tokenize(message.content))):
                return word
        return None
