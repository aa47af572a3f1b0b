"""Shards streamed to object storage: `pipe:COMMAND` outputs, COMMAND reading one finished file on stdin.

Shards are written and verified in a local staging folder first, so resuming and checksums work as
for a local output; each finished file is then piped to COMMAND with `{name}` replaced by its file
name (`pipe:aws s3 cp - s3://bucket/faces/{name}`), and its record notes the command that took it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

PIPE = "pipe:"
NAME = "{name}"


@dataclass(frozen=True)
class PipeTarget:
    """Where finished files go: a shell command template with `{name}` for the file name."""

    command: str

    @classmethod
    def parse(cls, output: str | Path) -> "PipeTarget | None":
        """The target of a `pipe:` output, None for a local folder; a clear error for a command without `{name}`."""
        output = str(output)
        if not output.startswith(PIPE):
            return None
        command = output[len(PIPE) :].strip()
        if NAME not in command:
            raise ValueError(
                f"the pipe: output {output!r} has no {NAME} for the file name; "
                f"write e.g. 'pipe:aws s3 cp - s3://bucket/faces/{NAME}'"
            )
        return cls(command)

    def command_for(self, name: str) -> str:
        return self.command.replace(NAME, name)

    def send(self, path: Path) -> str:
        """Pipe a finished file to its command; returns the command. The file stays where it is."""
        command = self.command_for(path.name)
        with open(path, "rb") as source:
            done = subprocess.run(command, shell=True, stdin=source, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if done.returncode != 0:
            reason = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise OSError(
                f"sending {path.name} with `{command}` failed (exit {done.returncode}: {reason[0]}); "
                f"the file stays in {path.parent}: fix the command or its credentials and rerun the same command"
            )
        return command

    def has_taken(self, name: str, record: dict | None) -> bool:
        """Whether a file's record says this target's command already took it."""
        return record is not None and record.get("sent_to") == self.command_for(name)
