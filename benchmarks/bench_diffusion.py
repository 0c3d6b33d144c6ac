"""image-diffusion against image-gan and image-vae: the same data, the same minutes each, trained one after
the other in one go; then DDIM and DPM-Solver++(2M) with 25 steps against ancestral DDPM with every step
(1,000) on the diffusion run. The three models' sample grids are written side by side beside the results file.

    python benchmarks/bench_diffusion.py                          # builtin:digits, 15 minutes each
    python benchmarks/bench_diffusion.py --data builtin:shapes    # 32x32 colour shapes
    python benchmarks/bench_diffusion.py --minutes 0.5 --samples-per-class 20 --sampler-images 20  # smoke
    python benchmarks/bench_diffusion.py --run RUNS/diffusion --sampler-images 1000   # samplers on a kept run

All models are conditional and trained with their default preset; both are evaluated as `muselab
evaluate` does (the diffusion model with its default controls: DPM-Solver++(2M) with 25 steps at the
guidance evaluate chooses for the run on the held-out images, among 1, 1.5, 2 and 3), with the same number
of samples per class, on muselab's own feature network (`fd_muselab` is not FID: compare it only between
these runs). The sampler comparison draws `--sampler-images` images (labels in turn) with each sampler,
times them and scores their Fréchet distance against the same training images.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from common import Timer, print_table, write_result

from muselab import api

RECIPES = {"gan": "image-gan", "vae": "image-vae", "diffusion": "image-diffusion"}
SHOWN = ("control_accuracy", "classifier_test_accuracy", "fd_muselab", "kid_muselab", "precision", "recall",
         "memorization_share", "test_reconstruction_mse", "guidance")


def train_and_evaluate(recipe: str, data: str, out: Path, minutes: float, overrides: list[str]) -> dict:
    result = api.train(recipe, data, out, overrides=["model.conditional=true", *overrides], max_minutes=minutes,
                       overwrite=True, quiet=not sys.stderr.isatty())
    clock = Timer()
    metrics = dict(api.evaluate(out))
    config = json.loads((out / "config.json").read_text())
    return {**metrics, "steps": result.step, "minutes": result.elapsed_s / 60,
            "eval_minutes": clock.stop() / 60, "run": str(out), "sizing_rule": (config.get("sizing") or {}).get("rule"),
            "width": config["config"]["model"]["width"], "batch_size": config["config"]["train"]["batch_size"]}


def side_by_side(grids: dict[str, Path], out: Path) -> Path | None:
    """The models' sample grids (evaluate's samples.png) in one picture, each under its name."""
    from PIL import Image, ImageDraw

    pictures = {name: Image.open(path).convert("RGB") for name, path in grids.items() if path.exists()}
    if not pictures:
        return None
    pad, caption = 8, 16
    width = sum(p.width for p in pictures.values()) + pad * (len(pictures) + 1)
    height = max(p.height for p in pictures.values()) + caption + 2 * pad
    canvas = Image.new("RGB", (width, height), "white")
    draw, x = ImageDraw.Draw(canvas), pad
    for name, picture in pictures.items():
        draw.text((x, pad // 2), f"image-{name}", fill="black")
        canvas.paste(picture, (x, pad + caption))
        x += picture.width + pad
    canvas.save(out)
    return out


def load_with_judge(run_dir: Path) -> tuple[api.Run, torch.Tensor, object]:
    """A kept run, its training images in [-1, 1] and the feature network evaluate judges them with."""
    from muselab.data.images import load_images, split_images, to_float
    from muselab.image.features import feature_net_for

    run = api.load(run_dir, device="cpu")
    cfg = run.config
    train, _ = split_images(load_images(run.saved["data"]["spec"], size=cfg.model.size, channels=cfg.model.channels),
                            test_share=cfg.data.test_share)
    real = to_float(train.images)
    net, _ = feature_net_for(real, train.labels, cfg.model.num_classes, cache_key=train.info["fingerprint"])
    return run, real, net


def compare_samplers(run_dir: Path, images: int, spacings: tuple[str, ...] = ("uniform",)) -> dict:
    """DDIM-25 and DPM-Solver++(2M)-25 (with each step spacing) vs DDPM-1000 on one run: seconds per image and
    Fréchet distance of each. The uniform spacing's rows are "ddim25" and "dpm++2m25", others add the
    spacing's name."""
    from muselab.image.metrics import image_quality_report

    run, real, net = load_with_judge(run_dir)
    cfg = run.config
    labels = torch.arange(images) % cfg.model.num_classes
    rows = {}
    guidance = run.model.guidance  # what `muselab generate` uses unless told otherwise (evaluate chose it)
    few_steps = [(f"{sampler}{'' if spacing == 'uniform' else '_' + spacing}", 25, 0.0, order, spacing)
                 for spacing in spacings for sampler, order in (("ddim25", 1), ("dpm++2m25", 2))]
    for name, steps, eta, order, spacing in [*few_steps, ("ddpm1000", cfg.model.timesteps, 1.0, 1, "uniform")]:
        clock = Timer()
        fakes = torch.cat([run.model.sample(len(chunk), chunk, steps=steps, eta=eta, order=order, guidance=guidance,
                                            generator=torch.Generator().manual_seed(i), spacing=spacing)
                           for i, chunk in enumerate(labels.split(500))])
        seconds = clock.stop()
        report = image_quality_report(net, real, fakes, labels)
        rows[name] = {"seconds_per_image": seconds / images, "fd_muselab": report["fd_muselab"],
                      "control_accuracy": report.get("control_accuracy")}
    rows["guidance"] = guidance
    rows["ddim25_speedup"] = rows["ddpm1000"]["seconds_per_image"] / rows["ddim25"]["seconds_per_image"]
    rows["ddim25_fd_ratio"] = rows["ddim25"]["fd_muselab"] / rows["ddpm1000"]["fd_muselab"]
    for name, *_ in few_steps:
        rows[f"{name}_fd_ratio"] = rows[name]["fd_muselab"] / rows["ddpm1000"]["fd_muselab"]
    return rows


def sweep_guidance(run_dir: Path, scales: list[float], samples_per_class: int) -> dict:
    """Control accuracy, precision, recall and the distances of the diffusion run at each guidance scale
    (the default sampler and steps), measured as `muselab evaluate` measures them: the same samples per class, reference images
    (training images) and seed."""
    from muselab.image.diffusion_recipe import guidance_sweep

    run, real, net = load_with_judge(run_dir)
    cfg = run.config
    reference = real
    if len(real) > cfg.eval.reference_images:
        pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:cfg.eval.reference_images]
        reference = real[pick]
    labels = torch.arange(cfg.model.num_classes).repeat_interleave(samples_per_class)
    return guidance_sweep(run.model, net, reference, labels, scales, k=cfg.eval.k)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="builtin:digits", help="builtin:digits, builtin:shapes or a folder")
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget of each model")
    parser.add_argument("--samples-per-class", type=int, default=1000, help="evaluation samples per class")
    parser.add_argument("--sampler-images", type=int, default=500, help="images per sampler in the DDIM/DDPM "
                                                                        "comparison (0 = skip it)")
    parser.add_argument("--models", default="gan,vae,diffusion", help="which to train, comma-separated")
    parser.add_argument("--set-gan", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--set-vae", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--set-diffusion", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--spacings", default="uniform", help="step spacings of the 25-step samplers compared, "
                                                                 "comma-separated: uniform, quadratic, log_snr, karras")
    parser.add_argument("--guidance-sweep", default="", metavar="SCALES",
                        help="also measure the diffusion run at these guidance scales, e.g. 1,1.5,3")
    parser.add_argument("--run", help="train nothing: compare the samplers (and sweep guidance) on this kept "
                                      "image-diffusion run")
    parser.add_argument("--evaluate", action="store_true", help="with --run: evaluate the kept run again first, "
                                                                 "as `muselab evaluate` does (guidance chosen anew)")
    parser.add_argument("--out", help="keep both runs in this folder (default: a temporary one)")
    parser.add_argument("--name", default=None, help="results file name (default: image_models_DATA, or "
                                                             "diffusion_samplers with --run)")
    args = parser.parse_args()
    root = Path(args.out or args.run or tempfile.mkdtemp(prefix="bench-diffusion-"))
    shared = [f"eval.samples_per_class={args.samples_per_class}"]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(models) - set(RECIPES)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {sorted(RECIPES)}")
    extra = {"gan": args.set_gan, "vae": args.set_vae, "diffusion": args.set_diffusion}
    if args.run:  # a kept run: its own training numbers stay in the results file that trained it
        diffusion_run, models, results, rows = Path(args.run), [], {"run": args.run}, []
        if args.evaluate:
            clock = Timer()
            results["diffusion"] = {**api.evaluate(diffusion_run), "eval_minutes": clock.stop() / 60}
            rows = [(key, f"{results['diffusion'][key]:.4g}") for key in SHOWN if key in results["diffusion"]]
    else:
        diffusion_run = root / "diffusion"
        results = {name: train_and_evaluate(RECIPES[name], args.data, root / name, args.minutes,
                                            [*shared, *extra[name]]) for name in models}
        rows = [(f"{key} {' / '.join(models)}", " / ".join(f"{results[m].get(key, float('nan')):.4g}"
                                                           for m in models))
                for key in (*SHOWN, "steps", "minutes", "eval_minutes")]
    if args.sampler_images and (args.run or "diffusion" in models):
        samplers = compare_samplers(diffusion_run, args.sampler_images, tuple(args.spacings.split(",")))
        results["samplers"] = samplers
        for name, row in samplers.items():
            if isinstance(row, dict):
                rows.append((f"{name} s/image, fd_muselab", f"{row['seconds_per_image']:.4g}, {row['fd_muselab']:.4g}"))
        rows.append(("ddim25 speed-up over ddpm1000", samplers["ddim25_speedup"]))
        rows += [(f"{key[:-len('_fd_ratio')]} / ddpm1000 fd_muselab", value) for key, value in samplers.items()
                 if key.endswith("_fd_ratio")]
    if args.guidance_sweep and (args.run or "diffusion" in models):
        scales = [float(v) for v in args.guidance_sweep.split(",")]
        results["guidance_sweep"] = sweep_guidance(diffusion_run, scales, args.samples_per_class)
        for scale, row in results["guidance_sweep"].items():
            rows.append((f"guidance {scale}: control, precision, recall, fd_muselab",
                         ", ".join(f"{row[k]:.4g}" for k in ("control_accuracy", "precision", "recall", "fd_muselab"))))
    command = ("python benchmarks/bench_diffusion.py "
               + (f"--run {args.run}" + (" --evaluate" if args.evaluate else "") if args.run
                  else f"--data {args.data} --minutes {args.minutes:g}")
               + f" --samples-per-class {args.samples_per_class} --sampler-images {args.sampler_images}"
               + (f" --models {args.models}" if models != list(RECIPES) and not args.run else "")
               + (f" --spacings {args.spacings}" if args.spacings != "uniform" else "")
               + (f" --guidance-sweep {args.guidance_sweep}" if args.guidance_sweep else "")
               + "".join(f" --set-gan {o}" for o in args.set_gan)
               + "".join(f" --set-vae {o}" for o in args.set_vae)
               + "".join(f" --set-diffusion {o}" for o in args.set_diffusion))
    rows.append(("command", command))
    print_table(rows)
    name = args.name or ("diffusion_samplers" if args.run else
                         "image_models_" + args.data.replace("builtin:", "").replace("/", "_").strip("_"))
    path = write_result(name, {**results, "command": command})
    grids = side_by_side({m: root / m / "samples.png" for m in models}, path.with_suffix(".png"))
    print(f"written {path}" + (f" and {grids}" if grids else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
