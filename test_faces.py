"""Tests of faces.py: synthetic faces are a pure function of (seed, index), pinned to their pixels."""
import hashlib

import pytest
import torch

import faces


def test_synthetic_faces_are_a_pure_function_of_seed_and_index():
    block = faces.synthetic_faces(0, 80, seed=3)
    assert block.shape == (80, 3, 64, 64) and block.dtype == torch.uint8
    assert torch.equal(block, faces.synthetic_faces(0, 80, seed=3))
    for i in (0, 1, 63, 64, 79):
        assert torch.equal(faces.synthetic_faces(i, 1, seed=3)[0], block[i])
    assert torch.equal(faces.synthetic_faces(50, 20, seed=3), block[50:70])
    other = faces.synthetic_faces(0, 80, seed=4)
    assert (other.float() - block.float()).abs().mean() > 20


# SHA-256 of the uint8 bytes of synthetic_faces(start, count, seed), computed with the drawing code
# as it was at commit d924075, in data.py before it moved here: a regression pin. Caches of CACHE_VERSION 1
# hold these pixels, so if one changes, the drawing changed (bump data.CACHE_VERSION on purpose, then re-pin).
FACE_HASHES = {
    (0, 64, 0): "ea5b4354142655aa7c8fda96c225ecf924ae3cbb86da0359154fcb4c7d254318",
    (10**8, 17, 0): "afc2a502775cca1294e9e76009ae279c4acdff748808d1b2e217cf20783655bc",
    (2 * 10**8 + 5, 3, 0): "e3af8bbc3a8fc298083bce8b057173f2a380b77d900c9bba0a22940ac12b6466",
    (1000, 20, 3): "29c22ac34f140c32a730e859ba348d18c134719e619784ac5acfce6fddd96669",
}


@pytest.mark.parametrize("start, count, seed", FACE_HASHES)
def test_synthetic_faces_pixels_are_pinned(start, count, seed):
    images = faces.synthetic_faces(start, count, seed)
    assert hashlib.sha256(images.numpy().tobytes()).hexdigest() == FACE_HASHES[start, count, seed]


def test_synthetic_faces_vary():
    images = faces.synthetic_faces(1000, 64).float()
    assert images.std(dim=0).mean() > 30  # pixels vary across faces, in 0..255 units
    assert images.std(dim=(1, 2, 3)).min() > 10  # and within each face
    flat = images.flatten(1)
    distances = torch.cdist(flat, flat) + torch.eye(64) * 1e9
    assert distances.min() > 100  # no two faces alike
