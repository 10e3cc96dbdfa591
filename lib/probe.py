"""Linear probes of an autoencoder's code: what a linear model reads off the code z of an image
about its attributes (ridge regression in closed form, fitted on training codes, scored on test
codes), and linear CKA between two sets of codes of the same images. Pure tensor code: no files.
"""
from __future__ import annotations

import math

import torch

RIDGE = 1e-2  # ridge penalty on standardised codes, as a fraction of the number of training images


def ridge_fit(z: torch.Tensor, y: torch.Tensor, penalty: float = RIDGE) -> dict:
    """Ridge regression of targets y [N, K] on codes z [N, D], in float64: codes standardised with
    the training mean and std, an unpenalised bias, penalty * N on the weights."""
    z, y = z.double(), y.double()
    mean, std = z.mean(0), z.std(0).clamp_min(1e-8)
    x = (z - mean) / std
    y_mean = y.mean(0)
    gram = x.T @ x + penalty * len(x) * torch.eye(x.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, x.T @ (y - y_mean))
    return {"mean": mean, "std": std, "weights": weights, "bias": y_mean}


def ridge_predict(fit: dict, z: torch.Tensor) -> torch.Tensor:
    return ((z.double() - fit["mean"]) / fit["std"]) @ fit["weights"] + fit["bias"]


def probe(train_z: torch.Tensor, train_labels: dict, test_z: torch.Tensor, test_labels: dict, about: dict,
          penalty: float = RIDGE) -> dict:
    """Fit one linear probe per attribute on (train_z, train_labels) and score it on the test codes:
    accuracy for class attributes (one-hot ridge, argmax), R^2 for continuous ones; each with its
    standard error over test images and its chance level (the majority class of the training
    labels; R^2 = 0 for predicting the training mean). Also the means over each kind, with
    standard errors over images of the per-image mean (fraction correct; 1 - mean of squared
    errors over variances)."""
    n = len(test_z)
    per_attribute, correct, residual = {}, [], []
    for name, info in about.items():
        y_train, y_test = train_labels[name].double(), test_labels[name].double()
        if info["kind"] == "class":
            k = int(info["classes"])
            fit = ridge_fit(train_z, torch.nn.functional.one_hot(y_train.long(), k).double(), penalty)
            hit = (ridge_predict(fit, test_z).argmax(1) == y_test.long()).double()
            majority = torch.bincount(y_train.long(), minlength=k).argmax()
            chance = (y_test.long() == majority).double().mean().item()
            score = hit.mean().item()
            per_attribute[name] = {"kind": "class", "accuracy": score, "se": math.sqrt(max(score * (1 - score), 0.0) / n),
                                   "chance": chance}
            correct.append(hit)
        else:
            fit = ridge_fit(train_z, y_train[:, None], penalty)
            err = (ridge_predict(fit, test_z)[:, 0] - y_test) ** 2
            var = y_test.var(unbiased=False).clamp_min(1e-12)
            share = err / var  # per image; 1 - its mean is R^2
            per_attribute[name] = {"kind": "continuous", "r2": 1 - share.mean().item(), "se": share.std().item() / math.sqrt(n),
                                   "chance": 0.0}
            residual.append(share)
    out = {"attributes": per_attribute, "accuracy": None, "accuracy_se": None, "chance_accuracy": None, "r2": None, "r2_se": None}
    if correct:
        q = torch.stack(correct).mean(0)
        out.update(accuracy=q.mean().item(), accuracy_se=q.std().item() / math.sqrt(n),
                   chance_accuracy=sum(a["chance"] for a in per_attribute.values() if a["kind"] == "class") / len(correct))
    if residual:
        q = 1 - torch.stack(residual).mean(0)
        out.update(r2=q.mean().item(), r2_se=q.std().item() / math.sqrt(n))
    return out


def linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    """Linear centred kernel alignment of two sets of features of the same images ([N, D1], [N, D2]):
    1 for features equal up to rotation and scale, near 0 for unrelated ones (Kornblith et al. 2019)."""
    a = a.double() - a.double().mean(0)
    b = b.double() - b.double().mean(0)
    cross = torch.linalg.matrix_norm(a.T @ b) ** 2
    return (cross / (torch.linalg.matrix_norm(a.T @ a) * torch.linalg.matrix_norm(b.T @ b))).item()
