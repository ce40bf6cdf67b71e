"""Coreset: exact picks unchanged, the rounds, the approximate start, sharding, radius.

The basic greedy rules (count, determinism, the 2-approximation bound) are in
tests/test_ops.py; these tests pin what issue 16 changed around the loop.
"""

import os
import subprocess
import sys
import textwrap

from absl import logging
import numpy as np
import pytest

from dicofun.methods.patchcore import method as patchcore
from dicofun.ops import coreset

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fixed_input():
  return np.random.default_rng(7).normal(size=(300, 48)).astype(np.float32)


# The picks of the single-loop implementation before issue 16 (commit
# a687557) on _fixed_input(): segmenting and sharding must not change them.
_OLD_PROJECTED = [201, 215, 206, 28, 66, 267, 92, 37, 162, 205, 245, 60, 286,
                  22, 207]
_OLD_UNPROJECTED = [201, 28, 97, 206, 182, 52, 245, 283, 186, 219, 181, 36,
                    31, 207, 64]


@pytest.mark.parametrize("segment", [512, 4, 1])
def test_exact_greedy_picks_unchanged(segment):
  x = _fixed_input()
  assert coreset.greedy_coreset(x, num=15, projection_dim=16, seed=5,
                                segment=segment, impl="loop"
                                ).tolist() == _OLD_PROJECTED
  assert coreset.greedy_coreset(x, num=15, projection_dim=0, seed=5,
                                segment=segment, impl="loop"
                                ).tolist() == _OLD_UNPROJECTED


@pytest.mark.parametrize("hot", [1, 3, 16, 4096])
def test_rounds_picks_equal_the_loop(hot):
  # hot=1: a round per pick; 4096 ≥ N: one round, the loop on the host.
  x = _fixed_input()
  assert coreset.greedy_coreset(x, num=15, projection_dim=16, seed=5,
                                impl="rounds", hot=hot
                                ).tolist() == _OLD_PROJECTED
  assert coreset.greedy_coreset(x, num=15, projection_dim=0, seed=5,
                                impl="rounds", hot=hot
                                ).tolist() == _OLD_UNPROJECTED
  for method in ("greedy", "approximate"):
    loop = coreset.greedy_coreset(x, num=120, projection_dim=16, seed=2,
                                  method=method, impl="loop")
    rounds = coreset.greedy_coreset(x, num=120, projection_dim=16, seed=2,
                                    method=method, impl="rounds", hot=hot)
    np.testing.assert_array_equal(rounds, loop)


def test_rounds_on_clustered_rows_keep_the_radius():
  # Many rounds with both early and late hot sets: the same picks (or, at a
  # float near-tie, the same coverage radius) as the loop.
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(12, 8)).astype(np.float32) * 5
  x = centres[rng.integers(12, size=3000)] + rng.normal(
      size=(3000, 8)).astype(np.float32)
  loop = coreset.greedy_coreset(x, num=300, projection_dim=0, impl="loop")
  rounds = coreset.greedy_coreset(x, num=300, projection_dim=0,
                                  impl="rounds", hot=64)
  assert len(set(rounds.tolist())) == 300
  assert coreset.coverage_radius(x, rounds) == pytest.approx(
      coreset.coverage_radius(x, loop), rel=1e-5)


@pytest.mark.parametrize("hot", [1, 2, 4, 100])
def test_rounds_duplicates_are_never_picked_twice(hot):
  # Ties everywhere: rows outside the hot set share the maximum, so the
  # rounds fall back to plain steps (lowest row first, as the loop).
  dup = np.tile(np.eye(3, dtype=np.float32), (5, 1))
  want = coreset.greedy_coreset(dup, num=15, projection_dim=0, impl="loop")
  got = coreset.greedy_coreset(dup, num=15, projection_dim=0,
                               impl="rounds", hot=hot)
  assert got.tolist() == want.tolist()
  assert sorted(got.tolist()) == list(range(15))
  with pytest.raises(ValueError, match="impl"):
    coreset.greedy_coreset(dup, num=2, impl="fast")


def test_approximate_greedy_hand_example():
  # Five points on a line; num_starts=5 takes every row as a start, so each
  # row's initial distance is its mean distance to all rows:
  #   0: (0+1+2+3+10)/5 = 3.2   1: (1+0+1+2+9)/5 = 2.6
  #   2: (2+1+0+1+8)/5 = 2.4    3: (3+2+1+0+7)/5 = 2.6
  #   10: (10+9+8+7+0)/5 = 6.8
  # First pick: x=10 (row 4). Then min(mean, |x-10|): 0 → min(3.2, 10) =
  # 3.2, 1 → 2.6, 2 → 2.4, 3 → 2.6: row 0. Then min with |x-0|: 1 → 1,
  # 2 → 2, 3 → 2.6: row 3. (The plain greedy from row 2 would pick 4, 0,
  # then 1 or 3 by distance 1 each, lower index first: 1.)
  x = np.array([[0.], [1.], [2.], [3.], [10.]], np.float32)
  sel = coreset.greedy_coreset(x, num=3, projection_dim=0, method="approximate",
                               num_starts=5)
  assert sel.tolist() == [4, 0, 3]
  with pytest.raises(ValueError, match="method"):
    coreset.greedy_coreset(x, num=2, method="exactish")


def test_approximate_start_matches_official_formula():
  # Official PatchCore: starts = random rows, anchor distance = mean
  # Euclidean distance to them, then the greedy loop on min distances.
  x = _fixed_input()
  starts = np.sort(np.random.default_rng(3).choice(300, 10, replace=False))
  d = np.sqrt(((x[:, None].astype(np.float64) - x[starts][None]) ** 2
               ).sum(-1)).mean(1)
  want = []
  for _ in range(12):
    j = int(np.argmax(d))
    want.append(j)
    d = np.minimum(d, np.sqrt(((x.astype(np.float64) - x[j]) ** 2).sum(-1)))
  got = coreset.greedy_coreset(x, num=12, projection_dim=0, seed=3,
                               method="approximate")
  assert got.tolist() == want


def test_coverage_radius_hand_value():
  # Points (0,0), (3,4), (6,8), (0,1); centres rows 0 and 2: distances
  # 0, 5, 0, 1 → radius 5.
  x = np.array([[0, 0], [3, 4], [6, 8], [0, 1]], np.float32)
  assert coreset.coverage_radius(x, [0, 2]) == pytest.approx(5.0)
  assert coreset.coverage_radius(x, [1]) == pytest.approx(
      np.sqrt(3 ** 2 + 4 ** 2 + 0.0))  # (0,0) and (6,8) are 5 from (3,4).


def test_progress_is_logged_per_segment(monkeypatch):
  lines = []
  monkeypatch.setattr(logging, "info",
                      lambda msg, *a: lines.append(msg % a if a else msg))
  coreset.greedy_coreset(_fixed_input(), num=15, projection_dim=0, seed=5,
                         segment=4, impl="loop")
  final = [l for l in lines if l.startswith("coreset greedy (15 picks)")]
  assert final and final[-1].startswith("coreset greedy (15 picks): 4/4 (")
  assert "it/s" in final[-1]
  lines.clear()
  coreset.greedy_coreset(_fixed_input(), num=15, projection_dim=0, seed=5,
                         impl="rounds", hot=8)
  final = [l for l in lines if l.startswith("coreset greedy (15 picks)")]
  # Per pick, with rate and ETA.
  assert final and final[-1].startswith("coreset greedy (15 picks): 15/15 (")
  assert "it/s" in final[-1]


_SHARDED = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count={ndev}")
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import numpy as np
    from dicofun import parallel
    from dicofun.ops import coreset
    assert jax.device_count() == {ndev}
    mesh = parallel.make_mesh()
    x = np.random.default_rng(7).normal(size=(301, 48)).astype(np.float32)
    for method in ("greedy", "approximate"):
      for proj in (16, 0):
        one = coreset.greedy_coreset(x, num=40, projection_dim=proj, seed=5,
                                     method=method, segment=7, impl="loop")
        many = coreset.greedy_coreset(x, num=40, projection_dim=proj, seed=5,
                                      method=method, segment=7, mesh=mesh,
                                      impl="loop")
        np.testing.assert_array_equal(one, many)
        # CPU mesh: "auto" takes the host rounds, same picks.
        auto = coreset.greedy_coreset(x, num=40, projection_dim=proj, seed=5,
                                      method=method, mesh=mesh, hot=32)
        np.testing.assert_array_equal(one, auto)
    # Exact duplicates spread over shards: never picked twice.
    dup = np.tile(np.eye(3, dtype=np.float32), (5, 1))
    sel = coreset.greedy_coreset(dup, num=15, projection_dim=0, mesh=mesh,
                                 impl="loop")
    assert sorted(sel.tolist()) == list(range(15))
    print("OK")
""")


@pytest.mark.parametrize("ndev", [2, 3])
def test_sharded_picks_equal_single_device(ndev):
  env = dict(os.environ)
  env["PYTHONPATH"] = _REPO + os.pathsep + env.get("PYTHONPATH", "")
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", _SHARDED.format(ndev=ndev)],
                       env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "OK" in out.stdout


def test_patchcore_fit_passes_the_coreset_method():
  feats = _fixed_input()[:288].reshape(2, 12, 12, 48)
  flat = feats.reshape(-1, 48)
  picks = {}
  for name in ("greedy", "approximate"):
    bank = patchcore.fit(feats, coreset_fraction=0.05, projection_dim=16,
                         seed=1, coreset_method=name)
    sel = coreset.greedy_coreset(flat, fraction=0.05, projection_dim=16,
                                 seed=1, method=name)
    assert bank["bank"].shape == (14, 48)
    assert (bank["bank"] == flat[sel]).all()
    picks[name] = sel.tolist()
  assert picks["greedy"] != picks["approximate"]
