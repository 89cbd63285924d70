"""What the worker thread does for each endpoint: run the pipeline, fit the images to the
requested size, and deliver them as URLs or base64 PNGs.

Sizes: the API's sides (256, 512, 1024) map onto the cascade's stages. A request is made by the
smallest stage whose output is at least the requested side, then shrunk (Lanczos) to it; if no
stage is that large, by the largest stage, then grown (bicubic). So a 64/256/1024 cascade makes
256 natively, 512 from its 1024 output shrunk, and 1024 natively; Karlo's 64/256 cascade grows
its 256 output for 512 and 1024. Responses name the side that was generated in the
``x-unclip-source-size`` header.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from unclip.pipeline import UnCLIPPipeline
from unclip.pipeline.inpaint import resize_square
from unclip.pipeline.inputs import check_count
from unclip.pipeline.outpaint import Margins
from unclip.pipeline.plan import SamplingOptions, StageValue
from unclip.pipeline.watermark import add_signature
from unclip.server.files import ImageStore
from unclip.server.params import Common


@dataclass
class Delivery:
    """Where and how a request's images go."""

    common: Common
    base_url: str  # absolute, ends with "/": the URLs are base_url + "images/<name>"
    revised_prompt: str | None = None  # the prompt as sampled, where it was cut to CLIP's context


@dataclass
class Result:
    data: list[dict[str, str]]  # [{"url": ...} | {"b64_json": ...}] (+ "revised_prompt"), one per image
    source_side: int  # the side the cascade generated before resizing


@dataclass
class GenerateTask:
    prompt: str
    delivery: Delivery


@dataclass
class EditTask:
    prompt: str
    image: Image.Image
    mask: Image.Image | None
    delivery: Delivery


@dataclass
class VaryTask:
    image: Image.Image
    delivery: Delivery


@dataclass
class OutpaintTask:
    prompt: str
    image: Image.Image
    margins: Margins
    delivery: Delivery


@dataclass
class InterpolateTask:
    image_a: Image.Image
    image_b: Image.Image
    delivery: Delivery  # common.n is the number of frames


class Worker:
    """The served pipeline and its per-request settings. Every method runs on the worker thread
    and takes a list of tasks (a batch), returning one ``Result`` per task. No pipeline call makes
    more than ``max_batch`` images (a request's ``n`` above it is split), except interpolation,
    whose frames are one slerp (at most 16)."""

    def __init__(self, pipe: UnCLIPPipeline, store: ImageStore, *, steps: StageValue = None, eta: float = 1.0,
                 resample: int = 0, watermark: bool = False, precision: str = "fp32", max_batch: int = 10):
        self.pipe, self.store, self.max_batch = pipe, store, check_count("max_batch", max_batch)
        self.steps, self.eta, self.resample, self.watermark = steps, eta, resample, watermark
        SamplingOptions(precision=precision)  # a bad precision fails now
        self.precision = precision

    def options(self, side: int) -> SamplingOptions:
        return SamplingOptions(size=side, steps=self.steps, progress=False, precision=self.precision)

    def source_side(self, side: int) -> int:
        sizes = self.pipe.sizes
        if self.pipe.decoder is None:
            raise ValueError("missing component: the served pipeline has no decoder, so it makes no images")
        large_enough = [s for s in sizes if s >= side]
        return min(large_enough) if large_enough else max(sizes)

    def chunks(self, count: int) -> list[int]:
        """``count`` images as the sizes of pipeline calls of at most ``max_batch`` each."""
        return [min(self.max_batch, count - start) for start in range(0, count, self.max_batch)]

    def generate(self, tasks: list[GenerateTask]) -> list[Result]:
        """Compatible generations (same source side) in one batch: each prompt repeated n times."""
        source = self.source_side(tasks[0].delivery.common.side)
        prompts = [t.prompt for t in tasks for _ in range(t.delivery.common.n)]
        images = [image for start in range(0, len(prompts), self.max_batch)
                  for image in self.pipe.generate(prompts[start:start + self.max_batch], n=1,
                                                  options=self.options(source))]
        results, start = [], 0
        for task in tasks:
            count = task.delivery.common.n
            results.append(self.deliver(images[start:start + count], task.delivery, source))
            start += count
        return results

    def edit(self, tasks: list[EditTask]) -> list[Result]:
        return self._each(tasks, lambda task, options, n: self.pipe.inpaint(
            task.image, task.prompt, options, mask=task.mask, n=n, output_side=task.delivery.common.side,
            resample=self.resample))

    def vary(self, tasks: list[VaryTask]) -> list[Result]:
        return self._each(tasks, lambda task, options, n: self.pipe.variations(
            task.image.convert("RGB"), n, options, eta=self.eta))

    def interpolate(self, tasks: list[InterpolateTask]) -> list[Result]:
        return self._each(tasks, lambda task, options, n: self.pipe.interpolate(
            task.image_a.convert("RGB"), task.image_b.convert("RGB"), n, options), split=False)

    def _each(self, tasks: list, make: Callable[[Any, SamplingOptions, int], list[Image.Image]],
              split: bool = True) -> list[Result]:
        """One task at a time: its ``n`` images from ``make(task, options, count)`` calls at the
        cascade side that serves its size, each of at most ``max_batch`` images when ``split``."""
        out = []
        for task in tasks:
            source = self.source_side(task.delivery.common.side)
            n = task.delivery.common.n
            images = [image for count in (self.chunks(n) if split else [n])
                      for image in make(task, self.options(source), count)]
            out.append(self.deliver(images, task.delivery, source))
        return out

    def outpaint(self, tasks: list[OutpaintTask]) -> list[Result]:
        """Each expanded canvas comes back at its own size (the requested size is not applied)."""
        out = []
        for task in tasks:
            source = self.source_side(max(task.image.size))
            options = self.options(source)
            images = [self.pipe.outpaint(task.image, task.prompt, options, **vars(task.margins), seed=None)
                      for _ in range(task.delivery.common.n)]
            out.append(self.deliver(images, task.delivery, source, resize=False))
        return out

    def deliver(self, images: list[Image.Image], delivery: Delivery, source: int, resize: bool = True) -> Result:
        data: list[dict[str, Any]] = []
        for image in images:
            image = resize_square(image, delivery.common.side) if resize else image
            png = encode_png(add_signature(image) if self.watermark else image)
            if delivery.common.response_format == "b64_json":
                data.append({"b64_json": base64.b64encode(png).decode("ascii")})
            else:
                data.append({"url": f"{delivery.base_url}images/{self.store.save(png)}"})
            if delivery.revised_prompt is not None:
                data[-1]["revised_prompt"] = delivery.revised_prompt
        return Result(data=data, source_side=source)


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()
