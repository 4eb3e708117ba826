"""The realism feature network: trained once and cached; its Frechet distance is zero for a set
against itself and grows when the images are degraded."""

import torch
import torch.nn.functional as F

from openvision3.evaluation.fid import FeatureStats, frechet_distance
from openvision3.study.config import RealismConfig
from openvision3.study.realism import cached_feature_net, labelled_images, load_feature_net


def test_feature_net_is_cached_and_measures_degradation(tmp_path):
    from openvision3.data.synthetic.world import SyntheticWorld

    cfg = RealismConfig(train_images=64, epochs=2, width=8, feature_dim=8)
    path = cached_feature_net(cfg, world_seed=0, resolution=32, folder=tmp_path)
    stamp = (tmp_path / "feature_net.safetensors").stat().st_mtime_ns
    assert cached_feature_net(cfg, 0, 32, tmp_path) == path  # reused, not retrained
    assert (tmp_path / "feature_net.safetensors").stat().st_mtime_ns == stamp
    net = load_feature_net(path).eval()
    x, _ = labelled_images(SyntheticWorld(0), "val", 32, 32)
    blurred = F.avg_pool2d(x, 4).repeat_interleave(4, -1).repeat_interleave(4, -2)

    def fd(a, b):
        sa, sb = FeatureStats(8), FeatureStats(8)
        with torch.no_grad():
            sa.add(net.features(a).double())
            sb.add(net.features(b).double())
        return frechet_distance(*sa.mean_cov(), *sb.mean_cov())

    assert abs(fd(x, x)) < 1e-6
    assert fd(x, blurred) > 10 * abs(fd(x, x)) + 1e-3
    other = RealismConfig(train_images=64, epochs=1, width=8, feature_dim=8)
    cached_feature_net(other, 0, 32, tmp_path)  # other settings: retrained
    assert (tmp_path / "feature_net.safetensors").stat().st_mtime_ns != stamp
