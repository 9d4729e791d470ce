"""Index remapping to a subset of used codes (original VectorQuantizer2 semantics), in the module and standalone."""
import numpy as np
import pytest
import torch

from ldm.modules.vqvae.quantize import VectorQuantizer
from ldm.modules.vqvae.remap import build_inverse_table, load_used_indices, remap_to_used, unmap_to_all

USED = [3, 0, 5, 7]


@pytest.fixture
def used_file(tmp_path):
    path = tmp_path / "used.npy"
    np.save(path, np.array(USED, dtype=np.int64))
    return str(path)


def test_round_trip_of_used_codes(used_file):
    q = VectorQuantizer(8, 2, remap=used_file, unknown_index="extra")
    inds = torch.tensor([[3, 0, 5], [7, 7, 3]])
    positions = q.remap_to_used(inds)
    assert torch.equal(positions, torch.tensor([[0, 1, 2], [3, 3, 0]]))
    assert torch.equal(q.unmap_to_all(positions), inds)


@pytest.mark.parametrize("unknown, expected_pos, expected_back", [("extra", 4, 3), (2, 2, 5)])
def test_unknown_codes(used_file, unknown, expected_pos, expected_back):
    q = VectorQuantizer(8, 2, remap=used_file, unknown_index=unknown)
    assert q.re_embed == (5 if unknown == "extra" else 4)
    pos = q.remap_to_used(torch.tensor([[1, 6]]))
    assert torch.equal(pos, torch.full((1, 2), expected_pos))
    assert torch.equal(q.unmap_to_all(pos), torch.full((1, 2), expected_back))  # "extra" maps to used[0]


def test_random_unknown_stays_in_range(used_file):
    q = VectorQuantizer(8, 2, remap=used_file)  # default "random"
    assert q.unknown_index == "random" and q.re_embed == 4
    pos = q.remap_to_used(torch.tensor([[1, 2, 4, 6] * 50]))
    assert int(pos.min()) >= 0 and int(pos.max()) < 4 and len(set(pos.flatten().tolist())) > 1


def test_forward_with_remap_and_decode(used_file):
    q = VectorQuantizer(8, 2, remap=used_file, unknown_index="extra")
    with torch.no_grad():
        q.embedding.weight.copy_(torch.randn(8, 2) * 3)
    z = q.embedding.weight.detach()[torch.tensor(USED * 2)].t().reshape(1, 2, 2, 4)  # only used codes
    z_q, _, (_, _, idx) = q.eval()(z)
    assert idx.shape == (8, 1)  # the original flattens remapped indices to (N, 1)
    assert torch.equal(idx.flatten(), torch.tensor([0, 1, 2, 3] * 2))
    assert torch.allclose(q.get_codebook_entry(idx, (1, 2, 4, 2)), z_q)
    sane = VectorQuantizer(8, 2, remap=used_file, sane_index_shape=True)
    sane.load_state_dict(q.state_dict())
    assert sane(z)[2][2].shape == (1, 2, 4)


def test_used_is_saved_and_reloaded(used_file, tmp_path):
    q = VectorQuantizer(8, 2, remap=used_file, unknown_index="extra")
    assert torch.equal(q.state_dict()["used"], torch.tensor(USED))
    other_path = tmp_path / "other.npy"
    np.save(other_path, np.array([1, 2, 4, 6], dtype=np.int64))
    other = VectorQuantizer(8, 2, remap=str(other_path))
    other.load_state_dict(q.state_dict())  # the checkpoint's list wins, and lookups follow it
    assert torch.equal(other.remap_to_used(torch.tensor([[7, 3]])), torch.tensor([[3, 0]]))


def test_standalone_helpers_and_duplicates():
    used = torch.tensor([2, 4, 2])
    table = build_inverse_table(used, 6)
    assert table.tolist() == [-1, -1, 0, -1, 1, -1]  # duplicate code 2: first position wins, as argmax did
    assert remap_to_used(torch.tensor([[2, 9, -1]]), table, 7, 3).tolist() == [[0, 7, 7]]
    assert unmap_to_all(torch.tensor([[3, 1]]), used, 4).tolist() == [[2, 4]]


def test_bad_remap_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        VectorQuantizer(8, 2, remap=str(tmp_path / "missing.npy"))
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="1-D integer"):
        VectorQuantizer(8, 2, remap=str(bad))
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a readable"):
        load_used_indices(str(pickled))
    ok = tmp_path / "ok.npy"
    np.save(ok, np.array([1]))
    with pytest.raises(ValueError, match="unknown_index"):
        VectorQuantizer(8, 2, remap=str(ok), unknown_index="nope")
    with pytest.raises(RuntimeError, match="remap"):
        VectorQuantizer(8, 2).remap_to_used(torch.zeros(1, 1, dtype=torch.long))
