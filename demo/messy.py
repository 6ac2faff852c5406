"""What real crawls meet, built into the demo web.

``cases(rng, base_url, sample_image)`` returns the messy images: for each, the path the
pages link to, the server behaviour (the ``routes.json`` entry the server reads), files to
write under ``site/``, and what a correct fetcher should conclude (``expect``). Tests iterate
over these, so adding a case here adds it to the server tests too.
"""

import io
import struct
import zlib



def bomb_png(side=16000):
    """A 1-bit greyscale PNG of side x side pixels (256 M pixels at the default) in ~30 kB."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg(img, **kw):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85, **kw)
    return buf.getvalue()


def cases(rng, sample_image):
    """List of dicts: name, path, route (or None for a plain static file), files, expect."""
    good = _jpeg(sample_image)
    tiny = _jpeg(sample_image.resize((12, 12)))
    banner = _jpeg(sample_image.resize((640, 40)))
    corrupt = bytes(rng.getrandbits(8) for _ in range(4096))
    svg = (b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
           b'<circle cx="32" cy="32" r="20" fill="red"/></svg>')
    html = b"<!DOCTYPE html><html><body>not an image</body></html>"
    return [
        dict(name="not_found", path="/img/missing/00001.jpg", route=None, files={},
             expect="404 Not Found"),
        dict(name="server_error", path="/x/error-500.jpg", route={"kind": "status", "status": 500}, files={},
             expect="500 Internal Server Error on every try"),
        dict(name="flaky", path="/x/flaky.jpg", route={"kind": "flaky", "fail": 1, "file": "x/good.jpg"},
             files={"x/good.jpg": good}, expect="503 on the first request, then 200 with a valid JPEG"),
        dict(name="slow", path="/x/slow.jpg", route={"kind": "slow", "delay": 1.5, "file": "x/good.jpg"},
             files={}, expect="headers after 1.5 s, then a valid JPEG"),
        dict(name="trickle", path="/x/trickle.jpg",
             route={"kind": "trickle", "chunk": 64, "interval": 0.5, "file": "x/good.jpg"}, files={},
             expect="a valid JPEG at 64 bytes every 0.5 s: each read is quick, the whole takes minutes"),
        dict(name="endless", path="/x/endless.jpg", route={"kind": "endless", "chunk": 16384, "interval": 0.01},
             files={}, expect="200, chunked, a body that never ends until the client hangs up"),
        dict(name="huge", path="/x/huge.jpg", route={"kind": "huge", "bytes": 48 << 20, "chunked": False},
             files={}, expect="200 with Content-Length 48 MiB of JPEG-looking bytes"),
        dict(name="huge_chunked", path="/x/huge-chunked.jpg", route={"kind": "huge", "bytes": 48 << 20, "chunked": True},
             files={}, expect="200, chunked, 48 MiB with no Content-Length"),
        dict(name="truncated", path="/img/bad/truncated.jpg", route=None,
             files={"img/bad/truncated.jpg": good[: len(good) // 2]}, expect="a JPEG cut in half"),
        dict(name="corrupt", path="/img/bad/corrupt.jpg", route=None,
             files={"img/bad/corrupt.jpg": corrupt}, expect="random bytes served as image/jpeg"),
        dict(name="bomb", path="/img/bad/bomb.png", route=None, files={"img/bad/bomb.png": bomb_png()},
             expect="a 16000x16000 PNG of ~30 kB: a decompression bomb"),
        dict(name="tiny", path="/img/bad/tiny.jpg", route=None, files={"img/bad/tiny.jpg": tiny},
             expect="a valid 12x12 JPEG, below any sensible minimum size"),
        dict(name="banner", path="/img/bad/banner.jpg", route=None, files={"img/bad/banner.jpg": banner},
             expect="a valid 640x40 JPEG, aspect ratio 16"),
        dict(name="svg", path="/img/bad/vector.svg", route=None, files={"img/bad/vector.svg": svg},
             expect="an SVG (image/svg+xml), not a raster image"),
        dict(name="image_as_html", path="/x/wrong-type.jpg",
             route={"kind": "file", "file": "x/good.jpg", "content_type": "text/html"}, files={},
             expect="a valid JPEG served as text/html"),
        dict(name="html_as_image", path="/x/not-an-image.jpg",
             route={"kind": "file", "file": "x/page.html", "content_type": "image/jpeg"},
             files={"x/page.html": html}, expect="an HTML page served as image/jpeg"),
        dict(name="redirect", path="/x/redirect-1.jpg",
             route={"kind": "redirect", "status": 301, "location": "/x/redirect-2.jpg"}, files={},
             expect="301 -> 302 -> a valid JPEG"),
        dict(name="redirect_hop", path="/x/redirect-2.jpg",
             route={"kind": "redirect", "status": 302, "location": "good.jpg"}, files={},
             expect="302 with a relative Location to a valid JPEG"),
        dict(name="redirect_loop", path="/x/loop-a.jpg",
             route={"kind": "redirect", "status": 302, "location": "/x/loop-b.jpg"}, files={},
             expect="302 to loop-b, which redirects back here: a loop"),
        dict(name="redirect_loop_b", path="/x/loop-b.jpg",
             route={"kind": "redirect", "status": 302, "location": "/x/loop-a.jpg"}, files={},
             expect="302 back to loop-a"),
        dict(name="noai", path="/x/noai.jpg",
             route={"kind": "file", "file": "x/good.jpg", "headers": {"X-Robots-Tag": "noai, noimageai"}},
             files={}, expect="a valid JPEG whose X-Robots-Tag says noai, noimageai"),
        dict(name="noindex", path="/x/noindex.jpg",
             route={"kind": "file", "file": "x/good.jpg", "headers": {"X-Robots-Tag": "noindex"}},
             files={}, expect="a valid JPEG with X-Robots-Tag noindex (no AI opt-out: fetch it)"),
    ]
