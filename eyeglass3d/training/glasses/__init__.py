"""Pieces of the synthetic eyeglasses compositor (`eyeglass3d.training.compositor`).

`placement`: head pose and head occluder from 68 landmarks; `procedural`: drawn frame shapes;
`mesh_glasses`: the jeeliz 3D model; `raster`: the triangle rasteriser it needs; `materials`:
frame and lens colours; `layers`: the crop-box layers a source hands to the compositor.
"""
