"""Shards in object storage: `pipe:COMMAND` templates, `{name}` standing for a file name.

Writing (`regress.generate --output pipe:...`): shards are written and verified in a local staging
folder first, so resuming and checksums work as for a local output; each finished file is then
piped to COMMAND on stdin (`pipe:aws s3 cp - s3://bucket/faces/{name}`), and its record notes the
command that took it. Reading (`ShardDataModule(root="pipe:aws s3 cp s3://bucket/faces/{name} -")`):
each file is the COMMAND's stdout, a WebDataset `pipe:` URL.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

PIPE = "pipe:"
NAME = "{name}"


@dataclass(frozen=True)
class PipeCommand:
    """A shell command template with `{name}` for a file name: it takes a file on stdin, or gives one on stdout."""

    command: str

    @classmethod
    def parse(cls, location: str | Path) -> "PipeCommand | None":
        """The command of a `pipe:` location, None for a local folder; a clear error for a command without `{name}`."""
        location = str(location)
        if not location.startswith(PIPE):
            return None
        command = location[len(PIPE) :].strip()
        if NAME not in command:
            raise ValueError(
                f"the pipe: location {location!r} has no {NAME} for the file name; write e.g. "
                f"'pipe:aws s3 cp - s3://bucket/faces/{NAME}' to write, 'pipe:aws s3 cp s3://bucket/faces/{NAME} -' to read"
            )
        return cls(command)

    def command_for(self, name: str) -> str:
        return self.command.replace(NAME, name)

    def url_for(self, name: str) -> str:
        """The WebDataset URL that reads a file from the command's stdout."""
        return PIPE + self.command_for(name)

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
        """Whether a file's record says this command already took it."""
        return record is not None and record.get("sent_to") == self.command_for(name)
