"""A tiny random-weight Stable Diffusion pipeline, built from configs with no download (for CI and offline use).

The component configs follow diffusers' own pipeline tests (about 2 M parameters in all); the output is a 64x64
noise picture, which is all a test of the plumbing needs. The CLIP tokenizer is a byte-level vocabulary written
in memory: transformers 5 ignores ``vocab_file=``/``merges_file=`` and wants ``vocab=`` and ``merges=`` (as tuples).
"""

from __future__ import annotations

from typing import Any

SIZE = 64  # pixels: unet sample_size 32 x the VAE's scale factor 2
MAX_TOKENS = 256  # a byte-level vocabulary spends about one token per character: room for long prompts
_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "t</w>"), ("o", "n</w>"), ("i", "n"), ("e", "r</w>")]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (what the ByteLevel pre-tokenizer emits)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def build_tokenizer() -> Any:
    """A 520-token byte-level CLIP tokenizer: every byte, every byte ending a word, a few merges, two specials."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    tokens = [*chars, *(c + "</w>" for c in chars), *(a + b for a, b in _MERGES), "<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=list(_MERGES), model_max_length=MAX_TOKENS)


def build_pipeline(seed: int = 0) -> Any:
    """A ``StableDiffusionPipeline`` with random weights (deterministic for a given seed), on the CPU, in float32."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=SIZE // 2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=32, intermediate_size=37, layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=5,
        vocab_size=len(tokenizer), max_position_embeddings=MAX_TOKENS,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
