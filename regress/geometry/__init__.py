"""Geometry of generated heads: density on cube grids (`grids`), marching cubes (`marching_cubes`), meshes and
their PLY files, meshes of depth maps (`meshes`)."""
