"""Checkers for the exercises of notebook 02 (diagnose the modality-specific statistics)."""

from __future__ import annotations

from ..diagnose import peak_cosine_bound, peak_dimensions, rank_dimensions, remove_dimensions, top_gap_share
from ..embeddings import EmbeddingPack
from ..metrics import centroid_distance
from ._check import close_to, report


def check_peak_dimension(answer, pack: EmbeddingPack, modality: str = "text") -> bool:
    """Exercise 1: the dimension with the largest absolute mean in one modality of ``pack`` (0-based)."""
    if modality not in ("image", "text"):
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")
    expected = int(peak_dimensions(pack, top=1)[modality]["dim"].iloc[0])
    return report(close_to(answer, expected, 0),
                  f"call peak_dimensions(pack, top=1) and read the 'dim' of the {modality!r} table")


def check_top_share(answer, pack: EmbeddingPack, k: int = 10) -> bool:
    """Exercise 2: the fraction of the squared centroid distance carried by the k largest contributors, 3 decimals."""
    expected = top_gap_share(pack, ks=k)[k]
    return report(close_to(answer, expected, 5e-4),
                  f"sort the gap contributions in decreasing order and divide the sum of the first {k} by their total")


def check_cosine_bound(answer, p: float = -0.6, q: float = 0.3) -> bool:
    """Exercise 3: the bound on the image-text cosine with one image peak p and two text peaks q, 3 decimals."""
    expected = peak_cosine_bound(p, q)
    return report(close_to(answer, expected, 5e-4),
                  "the peaks take p^2 and 2 q^2 of the unit norms; multiply what is left and take the square root")


def check_removals_to_reach(answer, pack: EmbeddingPack, target: float = 0.5) -> bool:
    """Exercise 4: the fewest top dimensions (ranked by gap contribution) to remove for a centroid distance < target."""
    order = rank_dimensions(pack, by="gap")
    expected = None
    for count in range(pack.dim):
        removed = order[:count]
        distance = centroid_distance(remove_dimensions(pack.image_embeds, removed),
                                     remove_dimensions(pack.text_embeds, removed))
        if distance < target:
            expected = count
            break
    correct = expected is not None and close_to(answer, expected, 0)
    return report(correct, "run removal_experiment(pack, counts=range(0, 60)) and find the first row below the "
                           "target")
