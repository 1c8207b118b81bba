import numpy as np
import pytest

from eyeglass3d.geometry.alignment import (
    CANONICAL_FIVE_POINTS,
    crop_matrix,
    estimate_similarity,
    five_points_from_landmarks,
    invert_affine,
    region_matrix,
    transform_points,
)


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = scale * src @ rot.T + shift
    matrix = estimate_similarity(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_five_points_from_landmarks_follow_a_similarity_and_need_68_points():
    landmarks = np.random.default_rng(2).uniform(0, 200, (68, 2))
    angle, scale, shift = -0.4, 0.8, np.array([30.0, 7.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    five = five_points_from_landmarks(landmarks)
    np.testing.assert_allclose(five[0], landmarks[36:42].mean(0))
    np.testing.assert_allclose(five[4], landmarks[54])
    moved = five_points_from_landmarks(scale * landmarks @ rot.T + shift)
    np.testing.assert_allclose(moved, scale * five @ rot.T + shift, atol=1e-9)
    with pytest.raises(ValueError, match="68"):
        five_points_from_landmarks(landmarks[:5])


def test_crop_and_region_frames_agree():
    points = CANONICAL_FIVE_POINTS * 300 + np.array([40.0, 25.0])
    crop = crop_matrix(points, 256)
    np.testing.assert_allclose(transform_points(crop, points), CANONICAL_FIVE_POINTS * 256, atol=1e-6)
    box = (0.25, 0.2, 0.75, 0.6)
    region = region_matrix(points, box, (40, 100))
    corner_unit = np.array([[0.25, 0.2], [0.75, 0.6]])
    corner_px = transform_points(invert_affine(crop_matrix(points, 1)), corner_unit)
    np.testing.assert_allclose(transform_points(region, corner_px), [[0, 0], [100, 40]], atol=1e-6)


def test_a_shrinking_crop_is_area_averaged_and_keeps_its_geometry():
    import cv2

    from eyeglass3d.geometry.alignment import warp_crop

    stripes = np.zeros((800, 800, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: a plain bilinear 4x shrink samples only one kind of them
    matrix = np.array([[0.25, 0.0, 10.0], [0.0, 0.25, 5.0]])
    crop = warp_crop(stripes, matrix, 128)
    assert abs(float(crop.mean()) - 127.5) < 2 and crop.std() < 2
    dot = np.zeros((800, 800), np.uint8)
    cv2.circle(dot, (400, 300), 12, 255, -1)
    shrunk = warp_crop(dot, matrix, 128).astype(float)
    rows, cols = np.nonzero(shrunk)
    weights = shrunk[rows, cols]
    centre = np.array([(cols * weights).sum(), (rows * weights).sum()]) / weights.sum()
    assert np.allclose(centre, [0.25 * 400 + 10, 0.25 * 300 + 5], atol=0.05)
