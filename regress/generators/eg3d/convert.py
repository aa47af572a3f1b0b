"""Convert an upstream EG3D network pickle once into `model.safetensors` + `config.json`.

    python -m regress.generators.eg3d.convert ffhq512-128.pkl data/checkpoints/ffhq512-128

config.json records the SHA-256 of both files; a folder altered later, or converted before they were
recorded, is refused on load: convert it again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from regress.errors import UsageError, run_command
from regress.generators.eg3d.generator import EG3DGenerator
from regress.store.files import file_sha256


def convert(pickle_path: str | Path, out_dir: str | Path) -> Path:
    """Load `pickle_path` with the safe loader, check every tensor, write the converted folder; returns it."""
    pickle_path = Path(pickle_path)
    generator = EG3DGenerator.from_checkpoint(pickle_path)
    provenance = {"source": pickle_path.name, "source_sha256": file_sha256(pickle_path), "converted_by": "regress.generators.eg3d.convert"}
    return generator.save_converted(out_dir, provenance)


def main(argv: list[str] | None = None) -> int:
    """Command line: the pickle and the output folder; errors are one line, exit 2 (usage) or 1 (`regress.errors`)."""
    parser = argparse.ArgumentParser(prog="python -m regress.generators.eg3d.convert", description=__doc__.splitlines()[0], exit_on_error=False)
    parser.add_argument("pickle", type=Path, help="upstream network pickle (e.g. ffhq512-128.pkl)")
    parser.add_argument("out_dir", type=Path, help="folder to write model.safetensors and config.json into")

    def run() -> int:
        args = parser.parse_args(argv)
        if not args.pickle.is_file():
            raise UsageError(f"{args.pickle} is not a file: give the upstream network pickle")
        out = convert(args.pickle, args.out_dir)
        print(f"wrote {out / 'model.safetensors'} and {out / 'config.json'}")
        return 0

    return run_command("regress.generators.eg3d.convert", run)


if __name__ == "__main__":
    sys.exit(main())
