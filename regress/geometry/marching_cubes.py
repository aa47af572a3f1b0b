"""Marching cubes and largest-piece selection in torch: batched, on whatever device the grids live (the GPU in
shard generation, where a 256³ mesh costs milliseconds instead of a CPU-second).

The case table is built here from the cube's geometry, not copied: on every face of a cell the
crossed edges are joined in pairs, the two crossings around an inside corner together, so a face
shared by two cells is cut the same way from both sides and the meshes are watertight. The joined
crossings form closed loops; each loop is turned to face the outside (lower density) and cut
into a triangle fan. Vertices sit on the crossed grid edges, linearly interpolated, one per edge.
"""

from __future__ import annotations

import functools

import torch

CORNERS = [(c & 1, c >> 1 & 1, c >> 2 & 1) for c in range(8)]  # corner c of a cell at offset (x, y, z)
EDGES = [(a, axis) for axis in range(3) for a in range(8) if not a >> axis & 1]  # (low corner, axis): 12 edges


def _loops(case: int) -> list[list[int]]:
    """The closed loops of crossed edges (indices into EDGES) of one case (bit c set: corner c inside)."""
    inside = [bool(case >> c & 1) for c in range(8)]
    crossed = [e for e, (a, axis) in enumerate(EDGES) if inside[a] != inside[a | 1 << axis]]
    partners: dict[int, list[int]] = {e: [] for e in crossed}
    for axis in range(3):
        for side in range(2):
            face = [c for c in range(8) if (c >> axis & 1) == side]
            on_face = [e for e in crossed if EDGES[e][1] != axis and (EDGES[e][0] >> axis & 1) == side]
            pairs = [on_face] if len(on_face) == 2 else []
            if len(on_face) == 4:  # two inside corners on a diagonal: cut each off on its own
                pairs = [[e for e in on_face if c in (EDGES[e][0], EDGES[e][0] | 1 << EDGES[e][1])] for c in face if inside[c]]
            for first, second in pairs:
                partners[first].append(second)
                partners[second].append(first)
    loops, seen = [], set()
    for start in crossed:
        if start in seen:
            continue
        loop, previous, edge = [start], None, start
        seen.add(start)
        while True:
            following = next(e for e in partners[edge] if e != previous) if previous is not None else partners[edge][0]
            if following == start:
                break
            loop.append(following)
            seen.add(following)
            previous, edge = edge, following
        loops.append(_facing_outwards(loop, inside))
    return loops


def _facing_outwards(loop: list[int], inside: list[bool]) -> list[int]:
    """The loop, reversed if needed so that its normal (Newell's, right-handed) points from the inside corners out."""
    points = [[CORNERS[a][i] + 0.5 * (i == axis) for i in range(3)] for a, axis in (EDGES[e] for e in loop)]
    normal = [0.0, 0.0, 0.0]
    for p, q in zip(points, points[1:] + points[:1]):
        for i in range(3):
            j, k = (i + 1) % 3, (i + 2) % 3
            normal[i] += (p[j] - q[j]) * (p[k] + q[k])
    outwards = [0.0, 0.0, 0.0]
    for a, axis in (EDGES[e] for e in loop):
        outwards[axis] += -1.0 if inside[a | 1 << axis] else 1.0  # along the edge from its inside end to its outside end
    return loop if sum(n * o for n, o in zip(normal, outwards)) > 0 else loop[::-1]


@functools.cache
def case_table() -> torch.Tensor:
    """(256, 3 * max triangles) int64: the edges of each case's triangles, three by three, -1 after the last."""
    cases = [[e for loop in _loops(case) for i in range(1, len(loop) - 1) for e in (loop[0], loop[i], loop[i + 1])] for case in range(256)]
    width = max(len(edges) for edges in cases)
    return torch.tensor([edges + [-1] * (width - len(edges)) for edges in cases], dtype=torch.int64)


SEARCH_BLOCK = 8  # grid points a side of the blocks searched for crossed cells first, where the sizes allow


def cube_codes(inside: torch.Tensor) -> torch.Tensor:
    """Cube codes (..., X - 1, Y - 1, Z - 1) uint8 of inside bits (..., X, Y, Z) uint8: bit c set where the cell's
    corner CORNERS[c] is inside (x, then y, then z)."""
    bits = inside[..., :-1, :, :] | inside[..., 1:, :, :] << 1
    bits = bits[..., :-1, :] | bits[..., 1:, :] << 2
    return bits[..., :-1] | bits[..., 1:] << 4


def _next_block(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Each block's neighbour's value along `dim` (the next one; the last block's own)."""
    return torch.cat([values.narrow(dim, 1, values.shape[dim] - 1), values.narrow(dim, values.shape[dim] - 1, 1)], dim)


def crossed_cells(inside: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cells the surface crosses, of inside bits (N, X, Y, Z) uint8: each one's low corner (K,) as a flat index
    into the grids, in C order, and its cube code (K,).

    Where every size is a multiple of SEARCH_BLOCK, the grids are first cut into blocks of that many points a side and
    only the cells of blocks whose corners (their own points and the next blocks' first) hold both sides are coded: a
    head's surface passes through a small part of a 512^3 grid. Otherwise every cell is coded. Both give the same cells.
    """
    n, x, y, z = inside.shape
    if x % SEARCH_BLOCK or y % SEARCH_BLOCK or z % SEARCH_BLOCK:
        codes = cube_codes(inside)
        cells = ((codes != 0) & (codes != 255)).nonzero()
        return ((cells[:, 0] * x + cells[:, 1]) * y + cells[:, 2]) * z + cells[:, 3], codes[tuple(cells.T)]
    s, device = SEARCH_BLOCK, inside.device
    blocks = inside.reshape(n, x // s, s, y // s, s, z // s, s)
    some, every = blocks.amax((2, 4, 6)), blocks.amin((2, 4, 6))  # (N, X / s, Y / s, Z / s): any or all points inside
    for dim in (1, 2, 3):  # a block's cells also reach the next block's first points: the last block has none
        some, every = torch.maximum(some, _next_block(some, dim)), torch.minimum(every, _next_block(every, dim))
    searched = ((some > 0) & (every == 0)).nonzero()  # (B, 4): head and block, in C order
    span = torch.arange(s + 1, device=device)
    local = (span[:, None, None] * y + span[None, :, None]) * z + span[None, None, :]  # a block's points (and the next ones' first)
    last = torch.tensor([x // s - 1, y // s - 1, z // s - 1], device=device)
    flats, codes = [], []
    for part in searched.split(max(1, 2**24 // local.numel())):
        base = ((part[:, 0] * x + part[:, 1] * s) * y + part[:, 2] * s) * z + part[:, 3] * s
        # past the grid's high end the points wrap (or stop at its last): only cells outside the grid read them
        flat = (base[:, None] + local.reshape(-1)).clamp_(max=inside.numel() - 1)
        code = cube_codes(inside.view(-1)[flat].reshape(-1, s + 1, s + 1, s + 1))  # (B, s, s, s)
        for dim in range(3):  # the last block's last cells along an axis lie outside the grid
            code.select(dim + 1, s - 1)[part[:, dim + 1] == last[dim]] = 0
        block, i, j, k = ((code != 0) & (code != 255)).nonzero().unbind(1)
        flats.append(base[block] + (i * y + j) * z + k)
        codes.append(code[block, i, j, k])
    if not flats:
        return torch.empty(0, dtype=torch.int64, device=device), torch.empty(0, dtype=torch.uint8, device=device)
    flat, order = torch.cat(flats).sort()
    return flat, torch.cat(codes)[order]


def marching_cubes(grids: torch.Tensor, level: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Isosurfaces at `level` (inside: value > level) of grids (N, X, Y, Z), where the grids live.

    Returns vertices (V, 3) float32 in grid index units, faces (F, 3) int64 into them, wound
    counter-clockwise seen from outside, and the grid of each vertex (V,). Vertices and faces are
    grouped by grid in order; vertices are sorted by the grid edge they lie on, so the output is
    deterministic.
    """
    if grids.ndim != 4 or min(grids.shape[1:]) < 2:
        raise ValueError(f"grids must be (N, X, Y, Z) with at least 2 points per axis, got shape {tuple(grids.shape)}")
    n, x, y, z = grids.shape
    device = grids.device
    low_corner, codes = crossed_cells((grids > level).to(torch.uint8))
    table = case_table().to(device)[codes.long()]  # (K, slots)
    cell, slot = (table >= 0).nonzero(as_tuple=True)  # row-major: triangle corners in order, three by three
    # an edge's id: its low grid point (flat index over all grids) and its axis; the cell's low corner's, plus the edge's offset
    offsets = torch.tensor([((dx * y + dy) * z + dz) * 3 + axis for (dx, dy, dz), axis in ((CORNERS[a], axis) for a, axis in EDGES)], device=device)
    ids = low_corner[cell] * 3 + offsets[table[cell, slot]]
    ids, faces = torch.unique(ids, sorted=True, return_inverse=True)
    point, axis = ids // 3, ids % 3
    stride = torch.tensor([y * z, z, 1], device=device)[axis]
    flat = grids.reshape(-1)
    v0, v1 = flat[point].float(), flat[point + stride].float()
    t = (level - v0) / (v1 - v0)
    ijk = torch.stack([point // (y * z) % x, point // z % y, point % z], 1).float()
    vertices = ijk + t[:, None] * torch.nn.functional.one_hot(axis, 3).float()
    return vertices, faces.reshape(-1, 3), point // (x * y * z)


def group_sizes(groups: torch.Tensor, count: int) -> torch.Tensor:
    """How many of the sorted group numbers (P,) are each of 0 .. count - 1: a bincount without a GPU's atomic contention."""
    ends = torch.searchsorted(groups, torch.arange(count + 1, device=groups.device), side="left")
    return ends[1:] - ends[:-1]


def largest_pieces(faces: torch.Tensor, vertex_grid: torch.Tensor, num_grids: int) -> torch.Tensor:
    """Which faces (F,) belong to the piece with the most faces of their grid (vertex-connected; ties: the piece
    with the lowest vertex index), found where the faces live.

    Connected components by hooking and pointer jumping: every edge hooks the larger of its two
    roots under the smaller, then every vertex jumps to its root, until no edge joins two roots.
    Pointers only ever decrease, so each piece ends labelled by its lowest vertex. An edge within one
    piece stays there, so it is dropped (on a GPU, the atomics of a piece's edges on its root would queue).
    """
    num_vertices = len(vertex_grid)
    root = torch.arange(num_vertices, device=faces.device)
    ends = torch.stack([faces[:, [0, 1]].reshape(-1), faces[:, [1, 2]].reshape(-1)])  # two edges per face join its three vertices
    while True:
        a, b = root[ends]
        joins = a != b
        if not joins.any():
            break
        ends, a, b = ends[:, joins], a[joins], b[joins]
        root = root.scatter_reduce(0, torch.maximum(a, b), torch.minimum(a, b), reduce="amin")
        while not torch.equal(jumped := root[root], root):
            root = jumped
    face_root = root[faces[:, 0]]
    pieces, sizes = torch.unique(face_root, return_counts=True)  # each piece's root (its lowest vertex) and faces
    grid = vertex_grid[pieces]
    # per grid the most faces, then the lowest root: the first piece in the order of (grid, fewest missing faces, root)
    order = torch.argsort((grid * (len(faces) + 1) + len(faces) - sizes) * num_vertices + pieces)
    grids = torch.arange(num_grids, device=faces.device)
    first = order[torch.searchsorted(grid[order], grids).clamp(max=len(pieces) - 1)]
    chosen = torch.where(grid[first] == grids, pieces[first], num_vertices)  # none for a grid without faces
    return face_root == chosen[vertex_grid[faces[:, 0]]]
