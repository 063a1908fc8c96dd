"""benchmarks/cycit_diagnosis.py: its SAR-like variants are what its docstring says."""

import torch

from esccs.benchmarks import cycit_diagnosis as D


def test_diagnosis_variants_mix_mean_level_and_residuals_as_documented():
    g = torch.Generator().manual_seed(0)
    mu, real = torch.randn(6, 2, 8, 8, generator=g), torch.randn(6, 2, 8, 8, generator=g) + 3.0
    resid = torch.randn(4, 2, 8, 8, generator=g)
    pools = torch.randint(4, (6, 5), generator=g)
    mean = lambda x: x.mean((2, 3))  # noqa: E731
    out = {v: D.images(v, mu, real, resid, pools, torch.Generator().manual_seed(1)) for v in D.VARIANTS}
    assert torch.equal(out["mu"], mu) and torch.equal(out["ideal"], real)
    torch.testing.assert_close(mean(out["offset"]), mean(real))  # mu's texture at the real level
    torch.testing.assert_close(out["offset"] - mean(out["offset"])[..., None, None],
                               mu - mean(mu)[..., None, None])
    torch.testing.assert_close(mean(out["texture"]), mean(mu))  # real texture at mu's level
    def source(v, i):  # which bank residuals row i of variant v holds (as a multiset: turns / flips allowed)
        r = (out[v] - mu)[i].flatten().sort().values
        return {j for j in range(4) if torch.allclose(r, resid[j].flatten().sort().values, atol=1e-5)}

    assert all(source("resid", i) for i in range(6))  # mu + one residual of the bank
    assert all(source("resid-class", i) & set(pools[i].tolist()) for i in range(6))  # ... of the row's pool
