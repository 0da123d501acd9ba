import torch

from regionedit.cfg import classifier_free_guidance


def test_combine_and_scale_one():
    g = torch.Generator().manual_seed(0)
    uncond, cond = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    assert torch.allclose(classifier_free_guidance(uncond, cond, 7.5), uncond + 7.5 * (cond - uncond))
    assert torch.allclose(classifier_free_guidance(uncond, cond, 1.0), cond, atol=1e-6)


def test_rescale_rule_is_diffusers_rescale_noise_cfg():
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    g = torch.Generator().manual_seed(0)
    uncond, cond = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    guided = classifier_free_guidance(uncond, cond, 5.0)
    expected = rescale_noise_cfg(guided, cond, 0.7)
    assert torch.allclose(classifier_free_guidance(uncond, cond, 5.0, rescale=0.7), expected)
    assert not torch.allclose(guided, expected, atol=1e-3)
