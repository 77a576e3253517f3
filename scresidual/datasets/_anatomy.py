"""Random lymph-node layouts: which anatomical region lies at each point of a slide."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

REGIONS = (
    "capsule/SCS",
    "germinal centre",
    "mantle zone",
    "interfollicular",
    "paracortex",
    "medullary cord",
    "medullary sinus",
)
"""Region names, in a fixed order (the categories of ``obs['region']``)."""

CAPSULE, GC, MANTLE, INTERFOLLICULAR, PARACORTEX, CORD, SINUS = range(len(REGIONS))
OUTSIDE = -1


@dataclass
class Layout:
    """Geometry of one lymph node in slide coordinates (micrometres).

    The node is an ellipse (centre ``centre``, semi-axes ``a``, ``b``, rotated by ``angle``);
    in its own frame the hilum is at the bottom (local ``-y``). Follicles are circles below
    the capsule; each secondary follicle holds a germinal centre shifted away from the capsule.
    """

    centre: np.ndarray
    a: float
    b: float
    angle: float
    capsule: float
    cortex_band: float
    medulla_level: float
    medulla_wave: tuple[float, float, float]
    sinus_stripes: int
    sinus_phase: float
    sinus_wobble: tuple[float, float]
    sinus_threshold: float
    hilum_radius: float
    follicles: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)))
    """Rows ``(x, y, radius, gc_x, gc_y, gc_radius)`` in local coordinates (gc_radius 0 = none)."""

    def local(self, xy: np.ndarray) -> np.ndarray:
        """Slide coordinates to the node frame (centred, hilum down)."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        d = xy - self.centre
        return np.column_stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]])

    def depth(self, q: np.ndarray) -> np.ndarray:
        """Distance from local points to the capsule along the ray from the centre (< 0 outside)."""
        r = np.sqrt((q[:, 0] / self.a) ** 2 + (q[:, 1] / self.b) ** 2)
        norm = np.linalg.norm(q, axis=1)
        return np.where(r > 1e-9, norm * (1.0 - r) / np.maximum(r, 1e-9), np.inf)

    def in_medulla(self, q: np.ndarray) -> np.ndarray:
        """Whether local points lie below the (wavy) cortex-medulla border."""
        amp, freq, phase = self.medulla_wave
        u = q[:, 0] / self.a
        return q[:, 1] / self.b < self.medulla_level + amp * np.sin(freq * u + phase)

    def region(self, xy: np.ndarray) -> np.ndarray:
        """Region index (into :data:`REGIONS`) of slide points; :data:`OUTSIDE` off the node."""
        q = self.local(xy)
        depth = self.depth(q)
        out = np.full(len(q), PARACORTEX, dtype=np.int64)
        out[depth < self.cortex_band] = INTERFOLLICULAR

        # medulla: cords and sinuses radiate from the hilum as alternating, wobbling channels
        med = self.in_medulla(q)
        hilum = np.array([0.0, -self.b])
        rel = q - hilum
        dist = np.linalg.norm(rel, axis=1)
        theta = np.arctan2(rel[:, 1], rel[:, 0])
        amp, scale = self.sinus_wobble
        psi = theta + amp * np.sin(dist / scale + self.sinus_phase)
        sinus = np.cos(self.sinus_stripes * psi + self.sinus_phase) > self.sinus_threshold
        sinus |= dist < self.hilum_radius
        out[med] = np.where(sinus[med], SINUS, CORD)

        # follicles: mantle ring around an off-centre germinal centre (primary: mantle only)
        for fx, fy, fr, gx, gy, gr in self.follicles:
            in_f = (q[:, 0] - fx) ** 2 + (q[:, 1] - fy) ** 2 < fr**2
            out[in_f] = MANTLE
            if gr > 0:
                in_gc = (q[:, 0] - gx) ** 2 + (q[:, 1] - gy) ** 2 < gr**2
                out[in_f & in_gc] = GC

        out[depth < self.capsule] = CAPSULE
        out[depth < 0] = OUTSIDE
        return out

    def summary(self) -> dict:
        """Plain-typed description (for ``uns``)."""
        return {
            "centre_um": np.asarray(self.centre, dtype=float),
            "semi_axes_um": np.array([self.a, self.b]),
            "angle_rad": float(self.angle),
            "capsule_sinus_um": float(self.capsule),
            "n_follicles": int(len(self.follicles)),
            "n_germinal_centres": int((self.follicles[:, 5] > 0).sum()),
            "follicle_radii_um": self.follicles[:, 2].astype(float),
            "germinal_centre_radii_um": self.follicles[:, 5].astype(float),
            "n_medullary_sinuses": int(self.sinus_stripes),
        }


def random_layout(
    rng: np.random.Generator, width: float, height: float, *, max_tries: int = 400
) -> Layout:
    """Draw a random lymph-node layout filling a ``width`` x ``height`` capture area.

    The node fills the capture area, its hilum points down (+/- 26 degrees), and up to 6-10
    follicles (as many as fit without overlap, typically 5-7) lie in the outer cortex, about one
    in five of them primary (no germinal centre).
    """
    span = min(width, height)
    layout = Layout(
        centre=np.array([width / 2, height / 2]) + rng.uniform(-0.04, 0.04, 2) * span,
        a=0.5 * width * rng.uniform(1.0, 1.15),
        b=0.5 * height * rng.uniform(0.94, 1.0),
        angle=rng.uniform(-0.45, 0.45),
        capsule=rng.uniform(110.0, 150.0),
        cortex_band=0.0,
        medulla_level=rng.uniform(-0.25, -0.1),
        medulla_wave=(rng.uniform(0.04, 0.1), rng.uniform(2.0, 5.0), rng.uniform(0, 2 * np.pi)),
        sinus_stripes=int(rng.integers(9, 14)),
        sinus_phase=rng.uniform(0, 2 * np.pi),
        sinus_wobble=(rng.uniform(0.05, 0.15), rng.uniform(200.0, 400.0)),
        sinus_threshold=rng.uniform(0.1, 0.3),
        hilum_radius=rng.uniform(250.0, 400.0),
    )
    n_follicles = int(rng.integers(6, 11))
    radii = rng.uniform(340.0, 540.0, n_follicles)
    layout.cortex_band = layout.capsule + 2.0 * float(radii.mean())
    follicles: list[list[float]] = []
    corners = np.array([[0, 0], [width, height]], dtype=float)
    for radius in radii:
        for _ in range(max_tries):
            t = rng.uniform(0, 2 * np.pi)
            edge = np.array([layout.a * np.cos(t), layout.b * np.sin(t)])
            if edge[1] / layout.b < layout.medulla_level + 0.35:
                continue  # keep follicles in the cortex, away from the hilum side
            deep = layout.capsule + radius * rng.uniform(0.9, 1.2)
            if rng.random() < 0.25:
                deep += rng.uniform(150.0, 600.0)  # some follicles sit deeper in the cortex
            centre = edge * (1.0 - deep / np.linalg.norm(edge))
            slide_xy = _to_slide(layout, centre)
            if np.any(slide_xy < corners[0] + 0.5 * radius) or np.any(
                slide_xy > corners[1] - 0.5 * radius
            ):
                continue  # the follicle must be (mostly) on the capture area
            if any(np.hypot(*(centre - f[:2])) < radius + f[2] + 60.0 for f in follicles):
                continue
            primary = rng.random() < 0.2 and sum(f[5] > 0 for f in follicles) >= 3
            gc_radius = 0.0 if primary else radius - rng.uniform(80.0, 140.0)
            # the germinal centre is displaced away from the capsule: the mantle cap faces it
            inward = -centre / np.linalg.norm(centre)
            gc = centre + inward * rng.uniform(0.0, 30.0)
            follicles.append([*centre, radius, *gc, gc_radius])
            break
    layout.follicles = np.array(follicles, dtype=float).reshape(-1, 6)
    return layout


def _to_slide(layout: Layout, q: np.ndarray) -> np.ndarray:
    """Node-frame point back to slide coordinates."""
    c, s = np.cos(layout.angle), np.sin(layout.angle)
    return layout.centre + np.array([c * q[0] - s * q[1], s * q[0] + c * q[1]])


def hex_grid(spots_per_side: int, spacing: float) -> np.ndarray:
    """Visium-like hexagonal spot centres: ``spots_per_side`` rows and columns, odd rows offset."""
    rows, cols = np.meshgrid(np.arange(spots_per_side), np.arange(spots_per_side), indexing="ij")
    x = (cols + 0.5 * (rows % 2)) * spacing + spacing / 2
    y = rows * spacing * np.sqrt(3) / 2 + spacing / 2
    return np.column_stack([x.ravel(), y.ravel()]).astype(float)
