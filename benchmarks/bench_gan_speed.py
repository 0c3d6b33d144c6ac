"""GAN training speed: the image-gan recipe (the one Trainer) against two plain PyTorch loops.

    python benchmarks/bench_gan_speed.py [--data builtin:shapes] [--steps 150] [--rounds 3]

Both loops use the same Generator and Discriminator modules, losses, Adam settings and batches as the
recipe's default preset, and step the discriminator on real and detached fake images, then the generator
on the same fakes:

- the fair loop also takes the network-level optimisations the recipe's GAN module makes (image/gan.py):
  channels-last weights, one discriminator pass on real and fake images concatenated (the default
  discriminator has no BatchNorm), and no discriminator weight gradients in the generator step. Its
  ratio measures what the Trainer itself costs or saves (EMA, non-finite guards, gradient norms, logging);
- the textbook loop is the PyTorch DCGAN example as people write it: NCHW, two discriminator passes,
  discriminator gradients computed (and discarded) in the generator step. Its ratio is what a user moving
  from that loop to muselab sees.

Rounds alternate between the three so machine noise hits all alike; the median images/s is reported.
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


def loop_images_per_s(cfg, stream: ImageStream, steps: int, fair: bool, warmup: int = 10) -> float:
    """A plain loop (fair: with the GAN module's network-level optimisations; else the textbook loop),
    timed after `warmup` steps."""
    torch.manual_seed(0)
    generator, discriminator = Generator(cfg.model), Discriminator(cfg.model)
    if fair:
        generator.to(memory_format=torch.channels_last)
        discriminator.to(memory_format=torch.channels_last)
    betas = (cfg.train.beta1, cfg.train.beta2)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.train.lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.train.lr * cfg.model.d_lr_scale, betas=betas)
    d_params = list(discriminator.parameters())
    batches = torch.Generator().manual_seed(0)
    conditional = cfg.model.conditional
    one_pass = fair and not discriminator.batch_norm  # mixing real and fake in BatchNorm would leak the labels
    for step in range(steps + warmup):
        if step == warmup:
            clock = Timer()
        batch = stream.sample(cfg.train.batch_size, batches)
        real, labels = batch["image"], batch["label"] if conditional else None
        fake = generator(torch.randn(len(real), cfg.model.latent_dim), labels)
        opt_d.zero_grad(set_to_none=True)
        if one_pass:
            both, classes = discriminator.logits(torch.cat((real, fake.detach())),
                                                 None if labels is None else labels.repeat(2))
            d_real, d_fake = both.chunk(2)
            classes_real = None if classes is None else classes[:len(real)]
        else:
            (d_real, classes_real), (d_fake, _) = (discriminator.logits(real, labels),
                                                   discriminator.logits(fake.detach(), labels))
        d_loss = discriminator_loss(cfg.model.loss, d_real, d_fake)
        if classes_real is not None:  # the auxiliary classifier learns from real images
            d_loss = d_loss + cfg.model.aux_classifier * F.cross_entropy(classes_real, labels)
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        if fair:
            for p in d_params:
                p.requires_grad_(False)
        d_fake, classes_fake = discriminator.logits(fake, labels)
        g_loss = generator_loss(cfg.model.loss, d_fake)
        if classes_fake is not None:
            g_loss = g_loss + cfg.model.aux_classifier * F.cross_entropy(classes_fake, labels)
        g_loss.backward()
        if fair:
            for p in d_params:
                p.requires_grad_(True)
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
    ours, fair, textbook = [], [], []
    for _ in range(args.rounds):
        ours.append(recipe_images_per_s(args.data, args.overrides, args.steps))
        fair.append(loop_images_per_s(cfg, prepared.train, args.steps, fair=True))
        textbook.append(loop_images_per_s(cfg, prepared.train, args.steps, fair=False))
    median = statistics.median
    rows = [("data", args.data), ("image size", f"{cfg.model.size}x{cfg.model.size}x{cfg.model.channels}"),
            ("batch", cfg.train.batch_size), ("muselab images/s (median)", median(ours)),
            ("fair loop images/s (median)", median(fair)),
            ("textbook DCGAN loop images/s (median)", median(textbook)),
            ("ratio muselab / fair loop", median(ours) / median(fair)),
            ("ratio muselab / textbook loop", median(ours) / median(textbook)),
            ("ratio fair / textbook loop", median(fair) / median(textbook)),
            ("ratios per round muselab / fair", [round(o / f, 3) for o, f in zip(ours, fair, strict=True)]),
            ("ratios per round muselab / textbook", [round(o / t, 3) for o, t in zip(ours, textbook, strict=True)]),
            ("rounds", args.rounds), ("steps per round", args.steps), ("threads", torch.get_num_threads()),
            ("command", "python benchmarks/bench_gan_speed.py " + f"--data {args.data} --steps {args.steps} "
                        f"--rounds {args.rounds}" + "".join(f" --set {o}" for o in args.overrides[1:]))]
    print_table(rows)
    print(f"written {write_result('gan_speed', dict(rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
