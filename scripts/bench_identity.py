"""The identity scores of different people: the baseline to read the benchmark's identity scores against.

    python scripts/bench_identity.py --photos ../shared/fixtures/eg3d-photos

dlib's 128-d descriptors of one face per photo (the largest detected), then every pair of photos:
cosine similarity (`identity_similarity`, as `regress.evaluate benchmark` and `val/image_identity`
report it) and Euclidean distance (`identity_distance`; dlib calls two faces the same person under
0.6). Run it on photos of different people: an inversion's score means something only above what
strangers already score.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from regress.faces.identity import descriptor_scores, face_descriptor
from regress.inversion.align import detect_faces, load_image
from regress.inversion.photos import list_images

SAME_PERSON_DISTANCE = 0.6  # dlib's rule for its 128-d descriptors


def descriptors(photos: list) -> dict[str, np.ndarray]:
    """Each photo's descriptor of its largest face; photos without a face are named and left out."""
    found = {}
    for photo in photos:
        image = load_image(photo)
        faces = detect_faces(image)
        if not faces:
            print(f"{photo}: no face found, left out")
            continue
        found[photo.name] = face_descriptor(image, faces[0].landmarks)  # detect_faces puts the largest first
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", required=True, help="a folder of photos (one person each), a .txt list of paths, or images")
    args = parser.parse_args()
    found = descriptors(list_images(args.photos))
    if len(found) < 2:
        parser.error(f"{args.photos}: faces in {len(found)} photo(s); pairs need at least two")
    scores = [descriptor_scores(a, b) for a, b in itertools.combinations(found.values(), 2)]
    similarity, distance = [s["identity_similarity"] for s in scores], [s["identity_distance"] for s in scores]
    same = sum(d < SAME_PERSON_DISTANCE for d in distance)
    print(f"\n{len(found)} faces, {len(distance)} pairs\n")
    print("| score | min | median | max |\n| --- | ---: | ---: | ---: |")
    for name, values in (("identity_similarity (cosine)", similarity), ("identity_distance", distance)):
        print(f"| {name} | {min(values):.3f} | {np.median(values):.3f} | {max(values):.3f} |")
    print(f"\npairs under dlib's same-person distance {SAME_PERSON_DISTANCE}: {same} of {len(distance)}")


if __name__ == "__main__":
    main()
