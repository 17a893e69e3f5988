"""What the fingerprint of the current weights costs: hashing every tensor vs the cheap weights token.

    python benchmarks/fingerprint.py [--model ViT-B-32] [--repeats 3]

``kontrast.fingerprint(model)`` hashes the record's description and every tensor (sha256) the first time and
whenever the weights token changed (each tensor's storage pointer, version counter, dtype, device, shape);
otherwise it only recomputes the token. The table shows both costs on a randomly initialised model, plus the
cost after one in-place update of one tensor (which forces a new hash). Prints the CPU and its flags.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import kontrast
    from kontrast.cpu import cpu_model, isa_label
    from kontrast.record import fingerprint, forget_fingerprint, weights_token

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = kontrast.create_model(args.model).eval()
    n = sum(t.numel() for t in model.state_dict().values())
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    rows = []
    for label, prepare in (("full hash (first call / new weights)", lambda: forget_fingerprint(model)),
                           ("remembered (token only)", lambda: None),
                           ("after an in-place update of one tensor", lambda: model.logit_scale.add_(0))):
        times = []
        fingerprint(model)
        for _ in range(args.repeats):
            with torch.no_grad():
                prepare()
            t0 = time.perf_counter()
            fingerprint(model)
            times.append(time.perf_counter() - t0)
        rows.append((label, min(times)))
    t0 = time.perf_counter()
    weights_token(model)
    token = time.perf_counter() - t0
    print(f"CPU: {cpu_model()} | {isa_label()} | torch {torch.__version__} | threads {torch.get_num_threads()}")
    print(f"model: {args.model}, {n / 1e6:.1f}M parameters, {nbytes / 1e6:.0f} MB of tensors")
    print(f"| what | seconds (min of {args.repeats}) |")
    print("|---|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.4f} |")
    print(f"| weights_token alone | {token:.4f} |")


if __name__ == "__main__":
    main()
