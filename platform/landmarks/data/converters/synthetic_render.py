"""Procedural rendering of one synthetic face: numpy shapes with one-pixel soft edges.

A face lives in a face frame (x right, y down, 1 = half the face width) that `_Pose` maps to
pixels: small features (eyes, nose, mouth) sit on a rounded surface, so yaw and pitch slide and
foreshorten them; large regions (face, hair, neck) are ellipses lit by a Lambertian light. The
background is drawn at half resolution and upsampled, which is cheap and soft like a portrait's.
`render_face` is all the dataset (`synthetic.SyntheticFaces`) calls; it is deterministic in
(seed, identity, index). Cost is mostly numpy call overhead, ~1000 small ops per image: about
5-7 ms of CPU per 136 px image on a busy shared core (`benchmarks/synthetic_preview.py --time`).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageFilter

_TAG_IMAGE, _TAG_IDENTITY = 0, 1  # random streams; synthetic.py uses 2 for the splits

_SKIN = np.array([[246, 214, 192], [228, 182, 150], [196, 144, 108], [150, 100, 70], [96, 64, 46]],
                 np.float32)
_HAIR = np.array([[24, 20, 18], [58, 40, 28], [104, 70, 44], [188, 150, 96], [142, 64, 34], [150, 148, 142]],
                 np.float32)
_IRIS = np.array([[70, 44, 28], [36, 28, 24], [64, 94, 124], [74, 96, 64], [110, 84, 50]], np.float32)


def render_face(size: int, border: int, seed: int, identity: int, index: int, level: dict):
    """Image `index` of `identity`: (S, S, 3) uint8, landmarks (5, 2) float32 (x, y in pixels, MAFL
    order), mask (S, S) uint8 in {0, 255}. Landmarks lie at least 3 px inside the `border` crop.
    `level`: pose ranges, clutter and camera noise, one of `synthetic.LEVELS`."""
    rng = np.random.default_rng([seed, _TAG_IMAGE, index])
    return _render(size, border, _identity(seed, identity), rng, level)


@functools.lru_cache(maxsize=4096)
def _identity(seed: int, ident: int) -> dict:
    """Face-shape parameters in face units (1 = half the face width) and colours of one person.
    Cached, as an identity's images are usually rendered together: callers must not mutate it."""
    rng = np.random.default_rng([seed, _TAG_IDENTITY, ident])
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # Python floats keep float32 arrays float32
    t = float(rng.beta(1.3, 2.0)) * (len(_SKIN) - 1.001)  # lighter tones more often, as in CelebA
    skin = _SKIN[int(t)] + (t % 1) * (_SKIN[int(t) + 1] - _SKIN[int(t)]) + rng.normal(0, 6, 3)
    hair = _HAIR[rng.integers(len(_HAIR))] * u(0.8, 1.2) + rng.normal(0, 6, 3)
    return {
        "skin": skin.astype(np.float32), "hair": np.clip(hair, 5, 250).astype(np.float32),
        "iris": (_IRIS[rng.integers(len(_IRIS))] * u(0.8, 1.2)).astype(np.float32),
        "lips": (skin * np.array([u(0.78, 0.9), u(0.55, 0.68), u(0.58, 0.7)])).astype(np.float32),
        "aspect": u(1.22, 1.45), "jaw": u(0.1, 0.35), "eye_x": u(0.38, 0.5), "eye_y": u(-0.2, -0.06),
        "eye_w": u(0.16, 0.22), "eye_h": u(0.42, 0.62), "brow": u(0.16, 0.26), "brow_t": u(0.025, 0.05),
        "nose_y": u(0.28, 0.44), "nose_w": u(0.09, 0.15), "mouth_y": u(0.62, 0.8), "mouth_w": u(0.28, 0.42),
        "lip_t": u(0.035, 0.07), "hairline": u(-0.8, -0.5), "temples": u(0.1, 0.6), "part": u(-0.25, 0.25),
        "style": int(rng.choice(4, p=[0.08, 0.42, 0.3, 0.2])),  # bald, short, long, bob
        "volume": u(1.05, 1.25), "glasses": bool(rng.random() < 0.2), "sunglasses": bool(rng.random() < 0.3),
    }


def _clamp01(x: np.ndarray) -> np.ndarray:
    """In-place clip to [0, 1] (np.clip's wrapper costs more than the work on small windows)."""
    return np.minimum(np.maximum(x, 0, out=x), 1, out=x)


class _Canvas:
    """Float RGB image, channels first (3, S, S) so that (h, w) alphas broadcast cheaply, and a
    foreground coverage map (S, S). Shapes return a window (rows, cols) and an alpha (h, w)."""

    def __init__(self, size: int):
        self.size, self.grid = size, np.arange(size, dtype=np.float32)
        self.fg = np.zeros((size, size), np.float32)
        self.img = np.zeros((3, size, size), np.float32)

    def window(self, x0, y0, x1, y1):
        a, b = max(int(x0) - 1, 0), min(int(x1) + 2, self.size)
        c, d = max(int(y0) - 1, 0), min(int(y1) + 2, self.size)
        if a >= b or c >= d:
            return None, None, None
        return (slice(c, d), slice(a, b)), self.grid[a:b][None, :], self.grid[c:d][:, None]

    def ellipse(self, cx, cy, a, b, ang=0.0, ring=0.0, win=None):
        """Filled ellipse (semi-axes a, b px, rotated by ang) or a ring of half-width `ring` px;
        `win` reuses an earlier shape's window so that alphas can be multiplied (clipping)."""
        if win is None:
            r = max(a, b) + ring + 2
            win, xs, ys = self.window(cx - r, cy - r, cx + r, cy + r)
            if win is None:
                return None, None
        else:
            xs, ys = self.grid[win[1]][None, :], self.grid[win[0]][:, None]
        c, s = math.cos(ang), math.sin(ang)
        dx, dy = xs - cx, ys - cy  # (1, w), (h, 1): scaling these first keeps (h, w) ops few
        q, v = dx * (c / a) + dy * (s / a), dy * (c / b) - dx * (s / b)
        q = np.sqrt(np.add(q * q, v * v, out=q), out=q)  # normalised radius; (q - 1) * r ~ px distance
        r = 2 * a * b / (a + b)
        d = np.abs(q - 1, out=q) * r - ring if ring else (q - 1) * r  # px outside the edge (ring)
        return win, _clamp01(np.subtract(0.5, d, out=d))

    def polyline(self, pts, radius):
        """Round-capped stroke through the (n, 2) points with half-width `radius` px."""
        lo, hi = pts.min(0) - radius - 1, pts.max(0) + radius + 1
        win, xs, ys = self.window(lo[0], lo[1], hi[0], hi[1])
        if win is None:
            return None, None
        d2 = None
        for (x0, y0), (x1, y1) in zip(pts[:-1].tolist(), pts[1:].tolist()):
            ex, ey = x1 - x0, y1 - y0
            px, py, n2 = xs - x0, ys - y0, ex * ex + ey * ey + 1e-9
            t = _clamp01(px * (ex / n2) + py * (ey / n2))
            e = (px - t * ex) ** 2 + (py - t * ey) ** 2
            d2 = e if d2 is None else np.minimum(d2, e, out=d2)
        return win, _clamp01(np.subtract(0.5 + radius, np.sqrt(d2, out=d2), out=d2))

    def paint(self, win, alpha, color, opacity=1.0, fg=None):
        """Blend `color` ((3,) or (3, h, w)) in; fg=True adds to the mask, fg=False erases it."""
        if win is None:
            return
        patch = self.img[(slice(None), *win)]
        patch += (alpha * opacity if opacity != 1.0 else alpha) * (
            (color[:, None, None] if color.ndim == 1 else color) - patch)
        if fg is True:
            np.maximum(self.fg[win], alpha, out=self.fg[win])
        elif fg is False:
            self.fg[win] *= 1 - alpha


class _Pose:
    """Face frame (x right, y down, 1 = half the face width) -> image pixels. Features lie on a
    rounded face, so yaw/pitch slide and foreshorten them; then rotate, scale and translate."""

    def __init__(self, cx, cy, scale, rot, yaw, pitch):
        self.cx, self.cy, self.s, self.rot, self.yaw, self.pitch = cx, cy, scale, rot, yaw, pitch
        self.c, self.sn = math.cos(rot), math.sin(rot)

    def pt(self, x, y, lift=0.0):
        depth = 0.8 * math.sqrt(max(1 - x * x, 0.0)) + lift  # the face surface is 0.8 deep, plus lift
        x = x * math.cos(self.yaw) + depth * math.sin(self.yaw)
        y = y * math.cos(self.pitch) + depth * math.sin(self.pitch)
        return self.cx + self.s * (self.c * x - self.sn * y), self.cy + self.s * (self.sn * x + self.c * y)

    def ellipse(self, cv, x, y, a, b, ang=0.0, lift=0.0, ring=0.0, win=None):
        """A small feature at face (x, y), foreshortened horizontally by the yaw."""
        t = math.asin(max(min(x, 0.99), -0.99))
        fore = min(max(math.cos(t + self.yaw) / math.cos(t), 0.3), 1.3)
        return cv.ellipse(*self.pt(x, y, lift), max(a * self.s * fore, 0.6), max(b * self.s, 0.6),
                          self.rot + ang, ring, win)

    def polyline(self, cv, xs, ys, radius, lift=0.0):
        return cv.polyline(np.array([self.pt(x, y, lift) for x, y in zip(xs, ys)], np.float32), radius)

    def region(self, cv, x0, y0, a, b, taper=0.0):
        """A large face-frame ellipse (head, hair, neck) drawn without yaw, narrowed below its centre
        by `taper` (a jaw). Returns window, alpha, normalised coords (nu, nv), face coords (fx, fy)."""
        cx = self.cx + self.s * (self.c * x0 - self.sn * y0)
        cy = self.cy + self.s * (self.sn * x0 + self.c * y0)
        rx = self.s * math.hypot(a * self.c, b * self.sn) + 2  # half extents of the rotated ellipse
        ry = self.s * math.hypot(a * self.sn, b * self.c) + 2
        win, xs, ys = cv.window(cx - rx, cy - ry, cx + rx, cy + ry)
        if win is None:
            return (None,) * 6
        dx, dy = xs - self.cx, ys - self.cy
        fx, fy = (self.c * dx + self.sn * dy) / self.s, (self.c * dy - self.sn * dx) / self.s
        nu, nv = (fx - x0) / a, (fy - y0) / b
        if taper:
            nu = nu / (1 - taper * np.clip(nv, 0, 1) ** 2)
        d = np.sqrt(nu * nu + nv * nv)  # radial distance is edge enough for large smooth shapes
        r = self.s * math.sqrt(a * b)
        return win, _clamp01((0.5 + r) - d * r), nu, nv, fx, fy


def _to_pil(img_chw: np.ndarray) -> Image.Image:
    """(3, H, W) float in [0, 255] -> RGB image."""
    return Image.fromarray(np.ascontiguousarray(img_chw.astype(np.uint8).transpose(1, 2, 0)))


@functools.lru_cache(maxsize=64)
def _interpolation(cells: int, size: int):
    """Indices i0, i1 (size,) and weights w0, w1 (size,) that spread `cells` values over `size`
    pixels, smoothstep-weighted so that the noise has no creases at cell borders."""
    p = np.clip((np.arange(size) + 0.5) * (cells / size) - 0.5, 0, cells - 1)
    i0 = p.astype(int)
    f = (p - i0).astype(np.float32)
    f = f * f * (3 - 2 * f)
    return i0, np.minimum(i0 + 1, cells - 1), 1 - f, f


def _noise(rng, rows, cols, size, channels=1):
    """Smooth value noise in [0, 1], (channels, size, size), from a random rows x cols grid.
    Gathers rather than matmuls: BLAS threads fight other processes on a busy machine."""
    grid = rng.random((channels, rows, cols), dtype=np.float32)
    i0, i1, w0, w1 = _interpolation(cols, size)
    grid = grid[:, :, i0] * w0 + grid[:, :, i1] * w1  # (channels, rows, size)
    i0, i1, w0, w1 = _interpolation(rows, size)
    return grid[:, i0] * w0[:, None] + grid[:, i1] * w1[:, None]


def _rand_color(rng, face):
    """Clutter colours: skin tones (others' and this face's), darks, hair tones, anything."""
    r = rng.random()
    if r < 0.4:
        return (_SKIN[rng.integers(len(_SKIN))] if r < 0.3 else face["skin"]) * float(rng.uniform(0.75, 1.15))
    if r < 0.7:
        return rng.uniform(5, 70, 3).astype(np.float32) if r < 0.6 else _HAIR[rng.integers(len(_HAIR))].copy()
    return rng.uniform(0, 255, 3).astype(np.float32)


def _background(cv, rng, face, lv):
    """Value noise, stripes and blobs at half resolution (cheap, and soft like a portrait's
    out-of-focus background), upsampled; then a sharp decoy pair of eyes at full resolution."""
    size, half = cv.size, _Canvas((cv.size + 1) // 2)
    k = half.size / 136  # half-canvas pixels per 136-px reference pixel
    a, b = _rand_color(rng, face), _rand_color(rng, face)
    cells, grain_cells = int(rng.integers(2, 6)), int(rng.integers(10, 28))
    t = _noise(rng, cells, cells, half.size)[0]
    grain = _noise(rng, grain_cells, grain_cells, half.size, 3) - 0.5
    grain *= float(rng.uniform(10, 50))
    half.img[:] = a[:, None, None] + t * (b - a)[:, None, None] + grain
    if rng.random() < lv["stripes"]:
        beta, period = float(rng.uniform(0, math.pi)), float(rng.uniform(5, 20)) * k
        phase = half.grid[None, :] * math.cos(beta) + half.grid[:, None] * math.sin(beta)
        wave = np.clip(np.sin(phase * (2 * math.pi / period)) * float(rng.uniform(1, 4)), -1, 1) * 0.5 + 0.5
        half.paint((slice(None), slice(None)), wave, _rand_color(rng, face), float(rng.uniform(0.2, 0.7)))
    for _ in range(int(rng.integers(*lv["blobs"]))):
        r = float(rng.uniform(2, 26)) * k
        win, al = half.ellipse(*rng.uniform(0, half.size, 2).tolist(), r, r * float(rng.uniform(0.3, 1)),
                               float(rng.uniform(0, math.pi)))
        half.paint(win, al, _rand_color(rng, face), float(rng.uniform(0.5, 1)))
    small = _to_pil(np.clip(half.img, 0, 255, out=half.img)).resize((size, size), Image.BILINEAR)
    cv.img[:] = np.asarray(small, np.float32).transpose(2, 0, 1)
    if rng.random() < lv["pairs"]:
        x, y, gap = *rng.uniform(0, size, 2).tolist(), float(rng.uniform(18, 36)) * size / 136
        ang, rx = float(rng.uniform(-0.5, 0.5)), float(rng.uniform(2.5, 5)) * size / 136
        for sgn in (-1, 1):
            px, py = x + sgn * gap / 2 * math.cos(ang), y + sgn * gap / 2 * math.sin(ang)
            cv.paint(*cv.ellipse(px, py, rx * 1.6, rx, ang), np.full(3, 215, np.float32), 0.8)
            cv.paint(*cv.ellipse(px, py, rx * 0.8, rx * 0.8), rng.uniform(10, 60, 3).astype(np.float32))


def _sample_pose(size, border, f, rng, lv):
    """A pose whose five landmarks fall inside the central input crop (rejection, then centred)."""
    base = 34 / 136 * size  # half face width in px at scale 1: ~30 px inter-ocular at 136, as MAFL
    for attempt in range(12):
        shift = lv["shift"] * size if attempt < 11 else 0.0
        dx, dy, scale = rng.uniform([-shift, -shift, lv["scale"][0]], [shift, shift, lv["scale"][1]]).tolist()
        rot, yaw, pitch = (v * lv[k] for v, k in zip(rng.uniform(-1, 1, 3).tolist(), ("rot", "yaw", "pitch")))
        pose = _Pose(size / 2 + dx, 0.485 * size + dy, base * scale, math.radians(rot), yaw, pitch)
        kps = np.array([pose.pt(-f["eye_x"], f["eye_y"]), pose.pt(f["eye_x"], f["eye_y"]),
                        pose.pt(0.0, f["nose_y"], 0.3), pose.pt(-f["mouth_w"], f["mouth_y"]),
                        pose.pt(f["mouth_w"], f["mouth_y"])], dtype=np.float32)  # (5, 2)
        if kps.min() >= border + 3 and kps.max() <= size - 4 - border:
            break
    return pose, kps


def _render(size, border, f, rng, lv):
    """One image: (S, S, 3) uint8, landmarks (5, 2) float32, mask (S, S) uint8 in {0, 255}."""
    cv = _Canvas(size)
    _background(cv, rng, f, lv)
    pose, kps = _sample_pose(size, border, f, rng, lv)
    az, el = float(rng.uniform(-math.pi, math.pi)), float(rng.uniform(0.45, 1.5 - 0.5 * lv["light"]))
    light = (math.cos(az) * math.cos(el), -abs(math.sin(az)) * math.cos(el), math.sin(el),  # from above
             float(rng.uniform(0.7, 0.85)) - 0.3 * lv["light"])  # (lx, ly, lz, ambient)
    _draw_head(cv, pose, f, rng, light)
    _draw_features(cv, pose, f, rng, light, lv)
    if rng.random() < lv["occluder"]:  # a hand/object crossing the head, clear of every landmark
        for _ in range(5):
            edge = rng.integers(0, 2, 2) * size
            along = rng.uniform(0, size)
            p0 = np.array([along, edge[1]] if rng.random() < 0.5 else [edge[0], along])
            p1, r = rng.uniform(border, size - border, 2), float(rng.uniform(0.15, 0.35)) * pose.s
            e = p1 - p0
            t = np.clip(((kps - p0) @ e) / (e @ e + 1e-9), 0, 1)
            if np.min(np.linalg.norm(kps - (p0 + t[:, None] * e), axis=1)) > r + 3 * size / 136:
                arm = cv.polyline(np.stack([p0, p1]).astype(np.float32), r)
                cv.paint(*arm, _rand_color(rng, f), fg=False)
                break
    # camera: a gradient along the light, colour cast x exposure x contrast, sensor noise, blur
    grad = 1 + lv["light"] * float(rng.uniform(0.5, 1.0)) / size * (
        light[0] * (cv.grid[None, :] - size / 2) + light[1] * (cv.grid[:, None] - size / 2))
    exposure, contrast = float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.8, 1.1))
    gain = (1 + rng.normal(0, 0.035, 3)) * (exposure * contrast)  # per-channel cast
    offset = float(cv.img.mean()) * exposure * (1 - contrast)  # contrast about the mean
    noise = rng.random((size, size), dtype=np.float32) - 0.5
    noise *= float(rng.uniform(0.3, 1.0)) * lv["noise"] * math.sqrt(12)  # uniform noise of that sigma
    noise += offset
    for c in range(3):
        cv.img[c] *= grad * float(gain[c])
        cv.img[c] += noise
    out = _to_pil(np.clip(cv.img, 0, 255, out=cv.img))
    if rng.random() < lv["blur"]:
        out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.9)) * size / 136))
    return np.asarray(out), kps, np.where(cv.fg >= 0.5, np.uint8(255), np.uint8(0))


def _shaded(color, win, nu, nv, light, texture=None):
    """(3, h, w) colour of a lit ellipsoid whose normalised coordinates are (nu, nv)."""
    if win is None:  # the shape is outside the image
        return None
    lx, ly, lz, amb = light
    nz = np.sqrt(_clamp01(1 - nu * nu - nv * nv))
    shade = _clamp01(nu * lx + nv * ly + nz * lz) * (1 - amb) + amb
    return color[:, None, None] * (shade if texture is None else shade * texture)


def _draw_head(cv, pose, f, rng, light):
    """Shoulders, hair behind the head, neck, ears, face and the hair over the forehead."""
    asp, turn = f["aspect"], math.sin(pose.yaw)
    freq, phase = rng.uniform(15, 60, 3).tolist(), rng.uniform(0, 2 * math.pi, 3).tolist()

    def hair(win, al, nu, nv, fx):  # strands: brightness waves across the face frame's x
        if win is not None:
            tex = sum(0.06 * np.sin(fx * fr + ph) for fr, ph in zip(freq, phase)) + 1
            cv.paint(win, al, _shaded(f["hair"], win, nu, nv, light, tex), fg=True)

    win, al, nu, nv, _, _ = pose.region(cv, 0.0, asp + 1.3, float(rng.uniform(1.7, 2.3)), 1.0)  # shoulders
    cv.paint(win, al, _shaded(_rand_color(rng, f), win, nu, nv, light))
    # the face outline turns with the head (it lies in front of the neck's axis), the back hair less
    back = {2: (0.1 * turn, 0.35, f["volume"] * 1.15, asp + 0.75),  # long
            3: (0.1 * turn, 0.05, f["volume"] * 1.12, asp)}  # bob
    if f["style"] in back:
        hair(*pose.region(cv, *back[f["style"]])[:5])
    win, al, nu, nv, _, _ = pose.region(cv, 0.0, asp * 0.85, 0.5, 0.8)  # neck, in the chin's shadow
    cv.paint(win, al, _shaded(f["skin"] * 0.72, win, nu, nv, light))
    for sgn in (-1, 1):  # ears, near the turning axis: the one the face turns away from shows more
        ex, ey = pose.pt(sgn * 0.97 + 0.15 * turn, f["eye_y"] + 0.15, -0.2)
        width = max(0.13 * (1 + 0.9 * sgn * turn) * pose.s, 0.6)
        win, al = cv.ellipse(ex, ey, width, 0.22 * pose.s, pose.rot)
        cv.paint(win, al, f["skin"] * 0.85 * (0.5 + 0.5 * light[3]), fg=True)
    win, al, nu, nv, _, _ = pose.region(cv, 0.25 * turn, 0.0, 1.0, asp, f["jaw"])
    cv.paint(win, al, _shaded(f["skin"], win, nu, nv, light), fg=True)
    if f["style"] != 0:  # hair over the forehead, down to a hairline that rises at the temples
        win, al, nu, nv, fx, fy = pose.region(cv, 0.25 * turn, -0.12, f["volume"] * 1.02, asp * 0.96)
        if win is not None:
            fx = fx - 0.25 * turn
            al *= _clamp01(0.5 + (f["hairline"] + f["temples"] * fx * fx + f["part"] * fx - fy) * pose.s)
        hair(win, al, nu, nv, fx)


def _draw_features(cv, pose, f, rng, light, lv):
    """Eyebrows, eyes, glasses, nose and mouth, each lit by the face's mean shade."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))
    px, s = cv.size / 136, pose.s  # one reference pixel; face units -> px
    face_shade = light[3] + (1 - light[3]) * max(light[2], 0.0)
    skin = lambda k: f["skin"] * (k * face_shade)
    # the eye landmark is the centre of the opening; the iris wanders with the gaze
    blink, gx, gy, brow_up = rng.random() < 0.06, u(-0.25, 0.25), u(-0.1, 0.1), u(-0.03, 0.05)
    ts = np.linspace(0, math.pi, 5)
    for sgn in (-1, 1):
        ex, ey, ew, eh = sgn * f["eye_x"], f["eye_y"], f["eye_w"], f["eye_w"] * f["eye_h"]
        win, al = pose.ellipse(cv, ex + sgn * 0.03, ey - f["brow"] - brow_up, ew * 1.25, f["brow_t"],
                               sgn * u(0, 0.2))
        cv.paint(win, al, f["hair"] * 0.7 + skin(0.3), 0.85)
        if blink:
            lid = pose.polyline(cv, ex + ew * np.cos(ts), ey + 0.3 * eh * np.sin(ts), 0.7 * px)
            cv.paint(*lid, skin(0.35))
            continue
        win, sclera = pose.ellipse(cv, ex, ey, ew, eh)
        cv.paint(win, sclera, (0.25 * f["skin"] + 0.75 * np.float32(232)) * face_shade)
        _, iris = pose.ellipse(cv, ex + gx * ew, ey + gy * eh, eh * 0.95, eh * 0.95, win=win)
        cv.paint(win, iris * sclera, f["iris"] * face_shade)
        _, pupil = pose.ellipse(cv, ex + gx * ew, ey + gy * eh, eh * 0.42, eh * 0.42, win=win)
        cv.paint(win, pupil * sclera, np.full(3, 12, np.float32))
        lid = pose.polyline(cv, ex - ew * np.cos(ts), ey - eh * np.sin(ts), 0.75 * px)
        cv.paint(*lid, f["hair"] * 0.4, 0.9)
    if f["glasses"] and rng.random() < 0.8:
        rim = f["hair"] * 0.3 if rng.random() < 0.5 else rng.uniform(0, 200, 3).astype(np.float32)
        gw, gh, gy, ex = f["eye_w"] * 1.75, f["eye_w"] * 1.3, f["eye_y"] + 0.03, f["eye_x"]
        for sgn in (-1, 1):
            if f["sunglasses"] and lv["shades"]:
                cv.paint(*pose.ellipse(cv, sgn * ex, gy, gw, gh, lift=0.1), np.full(3, 25, np.float32), 0.85)
            cv.paint(*pose.ellipse(cv, sgn * ex, gy, gw, gh, lift=0.1, ring=0.7 * px), rim)
            arm = pose.polyline(cv, [sgn * (ex + gw * 0.95), sgn], [gy - 0.03, gy + 0.02], 0.7 * px, 0.1)
            cv.paint(*arm, rim)
        cv.paint(*pose.polyline(cv, [gw * 0.95 - ex, 0, ex - gw * 0.95], [gy - 0.05, gy - 0.09, gy - 0.05],
                                0.7 * px, 0.2), rim)
    # nose: a ridge shaded on the side away from the light, a lit tip, a shadow and nostrils below
    nw, ny, side = f["nose_w"], f["nose_y"], 1.0 if light[0] > 0 else -1.0
    cv.paint(*pose.polyline(cv, [-side * nw * 0.5, -side * nw * 0.9], [f["eye_y"] + 0.08, ny - 0.04],
                            nw * 0.35 * s, 0.2), skin(0.62), 0.25 + 0.4 * abs(light[0]))
    cv.paint(*pose.polyline(cv, [side * nw * 0.15] * 2, [f["eye_y"] + 0.1, ny - 0.08], nw * 0.15 * s, 0.25),
             skin(1.18), 0.35)
    cv.paint(*pose.ellipse(cv, 0.0, ny + nw * 0.55, nw * 1.1, nw * 0.3, lift=0.15), skin(0.55), 0.6)
    cv.paint(*pose.ellipse(cv, 0.0, ny, nw * 0.7, nw * 0.5, lift=0.3), skin(1.12), 0.5)
    for sgn in (-1, 1):
        nostril = pose.ellipse(cv, sgn * nw * 0.55, ny + nw * 0.4, nw * 0.3, nw * 0.18, lift=0.22)
        cv.paint(*nostril, skin(0.3), 0.8)
    # mouth: lips around a dark line whose ends are the mouth-corner landmarks; sometimes open
    mw, my, lip = f["mouth_w"], f["mouth_y"], f["lip_t"]
    smile, gap = u(-0.03, 0.08), u(0.03, 0.1) if rng.random() < 0.2 else 0.0
    cv.paint(*pose.ellipse(cv, 0.0, my + smile - lip * 0.5, mw * 0.9, lip * 0.65), f["lips"] * face_shade)
    lower = pose.ellipse(cv, 0.0, my + smile + gap + lip * 0.75, mw * 0.78, lip * 0.9)
    cv.paint(*lower, f["lips"] * face_shade * 1.08)
    if gap:
        win, al = pose.ellipse(cv, 0.0, my + smile + gap / 2, mw * 0.75, gap / 2 + 0.01)
        cv.paint(win, al, np.full(3, 30, np.float32))
        _, teeth = pose.ellipse(cv, 0.0, my + smile, mw * 0.5, gap / 2.5, win=win)
        cv.paint(win, teeth * al, np.full(3, 215, np.float32) * face_shade)
    xs = np.linspace(-mw, mw, 5)
    cv.paint(*pose.polyline(cv, xs, my + smile * (1 - (xs / mw) ** 2), 0.6 * px), f["lips"] * 0.3)
