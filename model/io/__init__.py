"""Validated input: 3D point-cloud / mesh files and images, shared by the CLI and the HTTP service.

Everything a user hands us goes through this package. The readers are written to be handed *anything*:
for any input bytes, :func:`read_points`, :func:`load_points` and :func:`read_image` either return a
well-formed result or raise :class:`InputError` (a ``ValueError``) whose ``code`` is a short machine
code and whose message is one human-readable line naming the problem. No other exception escapes
for any byte content (programming errors such as a wrong *argument type* still raise ``TypeError``).

One module per concern:

* :mod:`~model.io.contract` -- :class:`InputError`, the limits, reading a path or bytes;
* :mod:`~model.io.sniff` -- which format a file is, from its content (the name only breaks ties);
* :mod:`~model.io.parsing` -- helpers shared by the parsers (bounded counts, lazy lines, triangulation);
* :mod:`~model.io.ply`, :mod:`~model.io.off_obj`, :mod:`~model.io.clouds` -- PLY; OFF and OBJ; PCD,
  XYZ/TXT and NPY;
* :mod:`~model.io.points` -- a 3D file to raw points (meshes sampled on their surface);
* :mod:`~model.io.normalize` -- raw points to the model's fixed-size cloud in the unit sphere;
* :mod:`~model.io.images` -- PNG, JPEG, WebP, BMP, GIF and TIFF to a decoded RGB picture.
"""

from model.io.contract import DEFAULT_MAX_BYTES, MAX_POINTS, MIN_POINTS, POINTS_PER_CLOUD, InputError
from model.io.images import read_image
from model.io.normalize import normalize_points
from model.io.ply import write_ply
from model.io.points import load_points, read_points
from model.io.sniff import sniff_3d_format, sniff_kind

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_POINTS",
    "MIN_POINTS",
    "POINTS_PER_CLOUD",
    "InputError",
    "load_points",
    "normalize_points",
    "read_image",
    "read_points",
    "sniff_3d_format",
    "sniff_kind",
    "write_ply",
]
