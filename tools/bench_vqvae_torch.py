#!/usr/bin/env python3
"""Time AiT's own `VQVAE` (AURORA's depth VQ-VAE) at its real config on CPU: the PyTorch
counterpart of `cargo bench --bench vqvae` (benches/vqvae.rs), same cases and protocol.

Usage (from repo root; the AiT checkout as in fixtures/depth/README.md):
    git --git-dir=<mirror of SwinTransformer/AiT> archive HEAD vae | tar -x -C /tmp/ait
    /work/venv-torch/bin/python tools/bench_vqvae_torch.py [--ait /tmp/ait/vae] [--threads 2] [--layers]

AURORA's configs/depth/ait_depth_vqvae.py (320², 128 codes × 512, hidden 16, 2 ResBlocks, stride
32 → 10×10 grid), random torch init, eval(), no_grad, float32, torch.set_num_threads(2),
deterministic algorithms off. Cases: `vae.decode(codes)` of a (1,10,10) grid (the reference's
decode-from-codes path: `_vq_vae.forward_indice` + decoder), encode of a (1,1,320,320) map
(`vae(img, return_indices=True)`, as AURORA's get_codes.py), `vae.decode` of an (8,10,10) grid.
1 untimed warm-up + 10 timed runs each; medians in ms. Writes nothing.
"""
import argparse, sys, time

import torch

AURORA = dict(image_size=320, num_resnet_blocks=2, downsample_ratio=32, num_tokens=128, codebook_dim=512,
              hidden_dim=16, use_norm=False, channels=1, train_objective='regression', max_value=10.,
              residul_type='v1', loss_type='mse')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--ait', default='/tmp/ait/vae')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--layers', action='store_true',
                    help="also time the encoder's modules one by one (a conv with its ReLU, each ResBlock; "
                         "median of 50), as benches/vqvae.rs does per layer")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sys.path.insert(0, args.ait)
    from models.VQVAE import VQVAE
    vae = VQVAE(**AURORA).eval()
    s, k = AURORA['image_size'], AURORA['num_tokens']
    g = s // AURORA['downsample_ratio']
    print(f"AiT VQVAE (AURORA config: {s}^2, {k} codes x {AURORA['codebook_dim']}, hidden {AURORA['hidden_dim']}, "
          f"{AURORA['num_resnet_blocks']} ResBlocks, grid {g}x{g}), random f32 weights, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")

    def codes(b):
        return ((torch.arange(b * g * g) * 37 + 11) % k).reshape(b, g, g)  # same grid as the Rust bench

    def timeit(label, f):
        f()
        v = []
        for _ in range(10):
            t = time.perf_counter()
            f()
            v.append((time.perf_counter() - t) * 1e3)
        m = sorted(v)[len(v) // 2]
        print(f"{label:<38} median {m:8.2f} ms  [{', '.join(f'{x:.1f}' for x in v)}]")

    c1, c8 = codes(1), codes(8)
    x = (0.5 * torch.randn(1, 1, s, s)).clamp(-1, 1)
    with torch.no_grad():
        assert vae.decode(c1).shape == (1, 1, s, s)
        assert vae(img=x, return_indices=True).shape == (1, g, g)
        timeit('decode codes (1,10,10) -> (1,1,320,320)', lambda: vae.decode(c1))
        timeit('encode (1,1,320,320) -> codes (1,10,10)', lambda: vae(img=x, return_indices=True))
        timeit('decode codes (8,10,10) -> (8,1,320,320)', lambda: vae.decode(c8))
        if args.layers:
            # AiT's encoder is one nn.Sequential: Conv2d, ReLU, ..., ResBlocks, the 1x1 Conv2d.
            mods, h = list(vae.encoder), x
            i = 0
            while i < len(mods):
                step = mods[i:i + 2] if i + 1 < len(mods) and isinstance(mods[i + 1], torch.nn.ReLU) else mods[i:i + 1]
                f = torch.nn.Sequential(*step)
                for _ in range(5):
                    f(h)
                v = []
                for _ in range(50):
                    t = time.perf_counter()
                    f(h)
                    v.append((time.perf_counter() - t) * 1e3)
                name = ' + '.join(type(m).__name__ for m in step)
                print(f"  encoder {i:>2} {name:<16} in {tuple(h.shape)}: median {sorted(v)[25]:.3f} ms")
                h = f(h)
                i += len(step)


if __name__ == '__main__':
    main()
