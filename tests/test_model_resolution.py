"""A timm model built for one input size carried to another (landscape.models.resolution):
pretrained files saved at another size, and trained checkpoints evaluated at other sizes."""

import logging
import re

import pytest
import torch
import torchvision

from landscape.fixed_size import BUILT_FOR, built_for
from landscape.models import build_model, resolve_pool
from landscape.models.resolution import at_input_size

timm = pytest.importorskip("timm")


def _vit(size: int, **kw) -> torch.nn.Module:
    """A two-block ViT without class token (mean-pooled tokens), built for ``size`` px."""
    model = timm.create_model("vit_tiny_patch16_224", img_size=size, depth=2, num_classes=5,
                              class_token=False, global_pool="avg", **kw)
    setattr(model, BUILT_FOR, size)
    return model


def test_carried_weights_compute_the_same_function_on_a_tiled_image():
    """Without a class token and with one position vector everywhere, a ViT is a function of
    the multiset of patch tokens: a 64 px image that tiles a 32 px one 2 x 2 repeats each of
    the four tokens four times, which leaves attention and the mean token unchanged. So the
    model carried to 64 px must give the 32 px model's output (float64) if every
    weight was carried and the (constant) position table resampled to a constant."""
    torch.manual_seed(0)
    small = _vit(32).double().eval()
    with torch.no_grad():
        small.pos_embed.copy_(small.pos_embed[:, :1].expand_as(small.pos_embed))
    large, resampled = at_input_size(small, 64, lambda s: _vit(s), "vit")
    assert resampled == ["pos_embed"] and built_for(large) == 64 and not large.training
    assert large.pos_embed.shape == (1, 16, 192) and large.pos_embed.dtype == torch.float64
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        out = small(x)  # timm resamples the table in float32: its rounding, nothing more
        torch.testing.assert_close(large(x.repeat(1, 1, 2, 2)), out, rtol=1e-7, atol=1e-8)
        assert (small(x.flip(-1)) - out).abs().max() > 1e-3  # the check can tell inputs apart
    # every other tensor is the trained one, unchanged
    own = small.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in large.state_dict().items() if k != "pos_embed")
    # global RNG untouched by the rebuild; a model at its own size or of free size: itself
    state = torch.get_rng_state()
    at_input_size(small, 16, lambda s: _vit(s), "vit")
    assert torch.equal(torch.get_rng_state(), state)
    assert at_input_size(small, 32, _vit)[0] is small
    cnn = torchvision.models.resnet18()
    assert at_input_size(cnn, 64, lambda s: pytest.fail("a CNN is not rebuilt"))[0] is cnn


def test_a_table_timm_cannot_resample_is_refused_naming_it():
    with torch.device("meta"):
        model = build_model("timm:cait_xxs24_224", resolve_pool(0), num_classes=10,
                            image_size=32)
    build = lambda s: build_model("timm:cait_xxs24_224", resolve_pool(0),  # noqa: E731
                                  num_classes=10, image_size=s)
    with torch.device("meta"), pytest.raises(ValueError, match=re.escape(
            "cait, built for 32 px, cannot be carried to 64 px: the model built for that size "
            "does not take its weights (other shape: pos_embed (32 px [1, 4, 192], model "
            "[1, 16, 192]))")):
        at_input_size(model, 64, build, "cait")


def test_pretrained_file_at_another_size_is_resampled_on_load(tmp_path, caplog):
    """A DeiT saved at 64 px (1 + 16 tokens) loads into the model built for 32 px (1 + 4):
    the class token's position is kept, the 4 x 4 grid resampled to 2 x 2 by timm (bicubic,
    antialiased), every other tensor loaded as saved."""
    src = timm.create_model("deit_tiny_patch16_224", img_size=64, num_classes=10, in_chans=1)
    path = tmp_path / "deit64.pt"
    torch.save(src.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="landscape.models.weights"):
        model = build_model("timm:deit_tiny_patch16_224", resolve_pool(0), num_classes=10,
                            in_channels=1, image_size=32, weights=str(path))
    assert "pos_embed resampled for 32 px inputs" in caplog.text
    saved = src.state_dict()
    pos = model.net.pos_embed
    assert pos.shape == (1, 5, 192) and torch.equal(pos[:, :1], saved["pos_embed"][:, :1])
    grid = saved["pos_embed"][0, 1:].reshape(4, 4, 192).permute(2, 0, 1)[None]
    want = torch.nn.functional.interpolate(grid, size=(2, 2), mode="bicubic", antialias=True)
    torch.testing.assert_close(pos[0, 1:], want[0].permute(1, 2, 0).reshape(4, 192))
    for k, v in model.state_dict().items():
        if k != "net.pos_embed":
            assert torch.equal(v, saved[model.source_key(k)]), k


def test_rf_analysis_without_a_size_traces_at_the_size_the_model_was_built_for():
    """CoAtNet's relative-position attention is sized when it is built: the run identity's
    size-free r_max (max_receptive_field) must trace it at that size, not at 224 px."""
    from landscape.receptive_field import max_receptive_field

    with torch.device("meta"):
        model = build_model("timm:coatnet_nano_rw_224", resolve_pool(0), num_classes=10,
                            in_channels=1, image_size=32)
    assert max_receptive_field(model) > 32


def test_torchvision_vits_are_built_for_the_input_size_and_carried_by_interpolate_embeddings():
    """torchvision's ViTs take image_size; a state at another size is fitted by torchvision's
    interpolate_embeddings: the class token's position kept, a constant grid stays constant,
    every other tensor as it was."""
    from torchvision.models import VisionTransformer

    def vit(size):
        model = VisionTransformer(image_size=size, patch_size=8, num_layers=1, num_heads=2,
                                  hidden_dim=8, mlp_dim=16, num_classes=3)
        setattr(model, BUILT_FOR, size)
        return model

    with torch.device("meta"):
        built = build_model("torchvision:vit_b_16", resolve_pool(0), num_classes=10,
                            in_channels=1, image_size=32)
    assert built_for(built) == 32 and built.net.encoder.pos_embedding.shape == (1, 5, 768)
    small = vit(16).eval()
    with torch.no_grad():
        small.encoder.pos_embedding[:, 1:] = small.encoder.pos_embedding[:, 1:2]
    large, resampled = at_input_size(small, 32, vit, "vit")
    assert resampled == ["encoder.pos_embedding"]
    pos, old = large.encoder.pos_embedding, small.encoder.pos_embedding
    assert pos.shape == (1, 17, 8) and torch.equal(pos[:, 0], old[:, 0])
    torch.testing.assert_close(pos[:, 1:], old[:, 1:2].expand(1, 16, 8))
    own = small.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in large.state_dict().items()
               if k != "encoder.pos_embedding")
    assert large(torch.randn(2, 3, 32, 32)).shape == (2, 3)
