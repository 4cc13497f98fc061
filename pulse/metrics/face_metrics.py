"""Identity and skin tone of each sample, as run columns (see :mod:`pulse.metrics.faces`, :mod:`pulse.metrics.skin`).

Columns (per sample; NaN, written as an empty cell and ``null``, where they do not apply):

- ``id_dist_hr``: identity distance (dlib descriptors) between the output and its input's ground truth;
- ``id_match_hr``: 1 when that distance is <= 0.6 (dlib's same-person threshold), else 0; its run mean is
  the share of outputs that are still the same person;
- ``ita_sr``, ``ita_hr``: skin tone (ITA, degrees) of the output and of the ground truth;
- ``ita_shift``: ``ita_sr - ita_hr``; positive means the output's skin is lighter than the person's;
- ``id_diversity``: mean pairwise identity distance among the duplicates of the sample's input;
- ``id_distinct``: how many distinct identities those duplicates show (clusters at 0.6, single linkage;
  :func:`pulse.metrics.faces.count_identities`). Its run mean answers "with ``solver.duplicates=N``, how many
  different people does PULSE propose per input?".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pulse.data import Problem
from pulse.metrics.base import MetricValues, SolvedBatch, ground_truth
from pulse.metrics.faces import SAME_PERSON, count_identities, face_landmarks, pairwise_distances, unavailable_reason
from pulse.metrics.skin import ita

TRUTH_COLUMNS = ("id_dist_hr", "id_match_hr", "ita_hr", "ita_shift")
DUPLICATE_COLUMNS = ("id_diversity", "id_distinct")
COLUMNS = (*TRUTH_COLUMNS[:2], "ita_sr", *TRUTH_COLUMNS[2:], *DUPLICATE_COLUMNS)


def _label(columns: Sequence[str]) -> str:
    return ", ".join(columns)


class FaceMetrics:
    """``id_dist_hr``, ``id_match_hr``, ``ita_sr``, ``ita_hr``, ``ita_shift``, ``id_diversity``, ``id_distinct``.

    Without the ``faces`` extra every column is null and one note says what to install; without ground
    truth the ``*_hr`` columns are null; with one duplicate per input the duplicate columns are. For a
    generator of another domain (terrain, microscopy, ...) every column is null and the note says so:
    a face detector returns numbers on any image, and they would mean nothing.

    Args:
        threshold: identity distance at or below which two faces are the same person (dlib's 0.6).
        domain: the generator's domain (:func:`pulse.generators.base.generator_domain`); only ``faces`` is measured.
    """

    def __init__(self, threshold: float = SAME_PERSON, domain: str = "faces") -> None:
        self.threshold = threshold
        self.domain = domain

    def __call__(self, result: SolvedBatch, problems: Sequence[Problem]) -> MetricValues:
        samples = len(result.seeds)
        values = {name: torch.full((samples,), math.nan, dtype=torch.float64) for name in COLUMNS}
        if self.domain != "faces":
            reason = f"face metrics apply to face generators only; this generator's domain is {self.domain!r}"
            return MetricValues(values=values, notes={_label(COLUMNS): reason})
        reason = unavailable_reason()
        if reason is not None:
            return MetricValues(values=values, notes={_label(COLUMNS): reason})
        notes: dict[str, str] = {}
        hr, known = ground_truth(result, problems)
        several = int(result.duplicate_index.max()) >= 1
        with torch.no_grad():
            # Identity descriptors (dlib's recognition network, loaded on first use) only where a column uses
            # them: a ground truth to compare with, or duplicates to compare among. Skin tone needs landmarks only.
            outputs = face_landmarks(result.hr, descriptors=bool(known.any()) or several)
            values["ita_sr"] = ita(result.hr, outputs)

        if known.any():
            assert outputs.descriptors is not None
            # Duplicates share their input's ground truth: analyse each input's once.
            firsts = {}
            for s in torch.nonzero(known).flatten().tolist():
                firsts.setdefault(int(result.input_index[s]), s)
            truth_samples = list(firsts.values())
            with torch.no_grad():
                truths = face_landmarks(hr[truth_samples], descriptors=True)
                truth_ita = ita(hr[truth_samples], truths)
            assert truths.descriptors is not None
            for row, index in enumerate(firsts):
                members = (result.input_index == index) & known
                distance = (outputs.descriptors[members] - truths.descriptors[row]).norm(dim=1)
                values["id_dist_hr"][members] = distance
                values["id_match_hr"][members] = (distance <= self.threshold).double()
                values["ita_hr"][members] = truth_ita[row]
            values["ita_shift"] = values["ita_sr"] - values["ita_hr"]
        else:
            notes[_label(TRUTH_COLUMNS)] = "no ground truth for these inputs (data=folder without data.factor)"

        if not several:
            notes[_label(DUPLICATE_COLUMNS)] = "needs several searches per input (solver.duplicates >= 2)"
        else:
            assert outputs.descriptors is not None
            for index in result.input_index.unique().tolist():
                members = result.input_index == index
                group = outputs.descriptors[members]
                first, second = torch.triu_indices(len(group), len(group), offset=1)
                values["id_diversity"][members] = pairwise_distances(group)[first, second].mean().item()
                values["id_distinct"][members] = float(count_identities(group, self.threshold))
        return MetricValues(values=values, notes=notes)
