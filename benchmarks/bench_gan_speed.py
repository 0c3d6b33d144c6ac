"""GAN training speed: the image-gan recipe (the one Trainer) against a plain PyTorch DCGAN loop.

    python benchmarks/bench_gan_speed.py [--data builtin:shapes] [--steps 150] [--rounds 3]

The reference is the loop people write from the PyTorch DCGAN example: two Adam optimizers, the
discriminator stepped on real and detached fake images, then the generator on the same fakes, with the
same Generator and Discriminator modules, losses and batch size as the recipe's default preset. The
recipe does more per step (an EMA of the weights, non-finite guards, logging), so "at least equal" is the
bar. Rounds alternate between the two so machine noise hits both alike; the median images/s is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from common import Timer, print_table, write_result

from muselab import api
from muselab.core.config import build_config, parse_overrides
from muselab.data.images import ImageStream
from muselab.image.gan import Discriminator, Generator, discriminator_loss, generator_loss
from muselab.image.gan_recipe import ImageGANRecipe


def plain_dcgan_images_per_s(cfg, stream: ImageStream, steps: int, warmup: int = 10) -> float:
    """The reference loop, timed after `warmup` steps."""
    torch.manual_seed(0)
    generator, discriminator = Generator(cfg.model), Discriminator(cfg.model)
    betas = (cfg.train.beta1, cfg.train.beta2)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.train.lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.train.lr * cfg.model.d_lr_scale, betas=betas)
    batches = torch.Generator().manual_seed(0)
    conditional = cfg.model.conditional
    for step in range(steps + warmup):
        if step == warmup:
            clock = Timer()
        batch = stream.sample(cfg.train.batch_size, batches)
        real, labels = batch["image"], batch["label"] if conditional else None
        fake = generator(torch.randn(len(real), cfg.model.latent_dim), labels)
        opt_d.zero_grad(set_to_none=True)
        (d_real, classes_real), (d_fake, _) = discriminator.logits(real, labels), discriminator.logits(fake.detach(), labels)
        d_loss = discriminator_loss(cfg.model.loss, d_real, d_fake)
        if classes_real is not None:  # the auxiliary classifier learns from real images
            d_loss = d_loss + cfg.model.aux_classifier * F.cross_entropy(classes_real, labels)
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        d_fake, classes_fake = discriminator.logits(fake, labels)
        g_loss = generator_loss(cfg.model.loss, d_fake)
        if classes_fake is not None:
            g_loss = g_loss + cfg.model.aux_classifier * F.cross_entropy(classes_fake, labels)
        g_loss.backward()
        opt_g.step()
    return steps * cfg.train.batch_size / clock.stop()


def recipe_images_per_s(data: str, overrides: list[str], steps: int, warmup: int = 10) -> float:
    """The recipe through api.train, timed from its own log (steps after the warm-up only)."""
    out = Path(tempfile.mkdtemp(prefix="bench-gan-")) / "run"
    settings = [*overrides, "train.eval_every=0", "train.checkpoint_every=0", f"train.log_every={warmup}"]
    api.train("image-gan", data, out, overrides=settings, max_steps=steps + warmup, quiet=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    elapsed = {r["step"]: r["elapsed_s"] for r in records if "elapsed_s" in r}
    batch = records[0]["examples_per_s"] / records[0]["steps_per_s"]
    return steps * batch / (elapsed[steps + warmup] - elapsed[warmup])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="builtin:shapes")
    parser.add_argument("--steps", type=int, default=150, help="timed steps per round (a multiple of 10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=["model.conditional=true"])
    args = parser.parse_args()
    recipe = ImageGANRecipe()
    cfg = build_config(recipe.config_class, [parse_overrides(args.overrides)])
    prepared = recipe.prepare_data(cfg, args.data)  # fills in the model's size, channels and classes
    ours, plain = [], []
    for _ in range(args.rounds):
        ours.append(recipe_images_per_s(args.data, args.overrides, args.steps))
        plain.append(plain_dcgan_images_per_s(cfg, prepared.train, args.steps))
    rows = [("data", args.data), ("image size", f"{cfg.model.size}x{cfg.model.size}x{cfg.model.channels}"),
            ("batch", cfg.train.batch_size), ("muselab images/s (median)", statistics.median(ours)),
            ("plain DCGAN loop images/s (median)", statistics.median(plain)),
            ("ratio muselab / plain", statistics.median(ours) / statistics.median(plain)),
            ("rounds", args.rounds), ("steps per round", args.steps), ("threads", torch.get_num_threads()),
            ("command", "python benchmarks/bench_gan_speed.py " + f"--data {args.data} --steps {args.steps} "
                        f"--rounds {args.rounds}" + "".join(f" --set {o}" for o in args.overrides[1:]))]
    print_table(rows)
    print(f"written {write_result('gan_speed', dict(rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
