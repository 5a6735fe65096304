"""JSON shapes of the rooms API: rooms, their messages, and a line said in one."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from opsroom.web.apitypes import UtcTime

MAX_TEXT = 2000  # what a line typed in the web room may hold (web/room.py cuts there too)
# C0 and C1 controls but tab and newline: a terminal escape or a NUL has no place in a chat line.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class RoomOut(BaseModel):
    name: str
    title: str
    systems: list[str] = Field(description="the systems the room shows (all when the catalog names none)")
    protected: list[str] = Field(description="protected environments among them: runbooks there need approval")


class MessageOut(BaseModel):
    """A line in a room, as stored (masked): said by a person (`kind` person) or by opsroom."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    room: str
    at: UtcTime
    author: str | None
    kind: str = Field(description="person, bot, notice or output")
    text: str


class SayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_TEXT, description="a line, e.g. `status` or `run restart-b`")

    @field_validator("text")
    @classmethod
    def _printable(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the text is blank; write what to say, e.g. `status`")
        if (bad := _CONTROL.search(v)) is not None:
            raise ValueError(f"the text holds the control character U+{ord(bad.group()):04X} at {bad.start()}; "
                             "send plain text (tab and newline are fine)")
        return v


class SaidOut(BaseModel):
    room: str
    messages: list[MessageOut] = Field(description="the line and what the room got after it by the time "
                                                   "it was handled (a command's answer); follow the room's "
                                                   "stream for later ones")
