"""MediaPipe's face mesh: 468 face points with relative depth, from the model files inside the mediapipe wheel.

The mesh's points are fixed places on the face, predicted in 3D even where a turned head hides
them; dlib's 68 collapse on a profile. Optional: without mediapipe (`mesh_available()` False) the
camera falls back on dlib alone. mediapipe 0.10.14 pins protobuf < 5, which wandb and tensorboard
refuse; installed with `pip install --no-deps mediapipe==0.10.14 opencv-python-headless flatbuffers`,
its calculator graph runs as it is, and only the graph's packets are read here (its Python
`solutions` wrappers need the old protobuf).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
from pathlib import Path

import numpy as np

MESH_POINTS = 468  # the face's points; the 10 iris points that follow them are not used
GRAPH = "modules/face_landmark/face_landmark_front_cpu.binarypb"


def mesh_available() -> bool:
    """Whether mediapipe is installed (see the module docstring for how)."""
    return importlib.util.find_spec("mediapipe") is not None


@contextlib.contextmanager
def _native_stderr_silenced():
    """The process's stderr (file descriptor 2) sent to /dev/null: mediapipe's native code logs there unasked
    (TensorFlow Lite's delegate, and a protobuf lookup it tries and survives at import)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _MeshGraph:
    """MediaPipe's face detection + face landmark graph, started once; one image at a time."""

    def __init__(self) -> None:
        with _native_stderr_silenced():
            self._start()

    def _start(self) -> None:
        import mediapipe
        from mediapipe.python import packet_creator
        from mediapipe.python._framework_bindings import calculator_graph, image_frame, resource_util

        root = Path(mediapipe.__file__).parent
        resource_util.set_resource_dir(str(root.parent))
        self._image = lambda array: packet_creator.create_image_frame(image_format=image_frame.ImageFormat.SRGB, data=array)
        self._graph = calculator_graph.CalculatorGraph(binary_graph_path=str(root / GRAPH))
        self._packets: dict = {}
        self._graph.observe_output_stream("multi_face_landmarks", lambda name, packet: self._packets.__setitem__(name, packet), True)
        side = {"num_faces": packet_creator.create_int(1), "with_attention": packet_creator.create_bool(True),
                "use_prev_landmarks": packet_creator.create_bool(False)}  # fmt: skip
        self._graph.start_run(side)
        self._timestamp = 0
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        from mediapipe.framework.formats import landmark_pb2
        from mediapipe.python._framework_bindings import _packet_getter

        with self._lock, _native_stderr_silenced():
            self._packets.clear()
            self._timestamp += 1_000_000  # a new, unrelated frame: the graph tracks nothing across them
            self._graph.add_packet_to_input_stream("image", self._image(np.ascontiguousarray(image)).at(self._timestamp))
            self._graph.wait_until_idle()
            packet = self._packets.get("multi_face_landmarks")
            if packet is None or packet.is_empty():
                return None
            serialized = _packet_getter._get_serialized_proto_list(packet)
        points = landmark_pb2.NormalizedLandmarkList.FromString(serialized[0]).landmark
        return np.array([[p.x, p.y, p.z] for p in points[:MESH_POINTS]], dtype=np.float64)


@functools.cache
def _mesh_graph() -> _MeshGraph:
    return _MeshGraph()


def face_mesh(image: np.ndarray) -> np.ndarray | None:
    """The face mesh (468, 3) of the largest face of an RGB uint8 image, or None when MediaPipe finds none.

    x, y: normalized image coordinates (the cameras' units); z: depth relative to the face's centre,
    towards the camera negative, in the units of x.
    """
    return _mesh_graph()(image)
