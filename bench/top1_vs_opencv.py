#!/usr/bin/env python3
"""fp32 top-1 of this project's engine next to OpenCV's Caffe importer, same images, same preprocessing.

    python bench/top1_vs_opencv.py --model squeezenet_v1.0 --images imagenet_dev
    python bench/top1_vs_opencv.py --model lenet_mnist --images mnist_dev
"""

from __future__ import annotations

import argparse

import numpy as np
from common import batches_of, labelled, model_paths, params_for, require_assets, top1

from int8tune.caffe.loader import load_net
from int8tune.check import opencv_net
from int8tune.convert.converter import convert_net
from int8tune.runtime import Engine


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="squeezenet_v1.0")
    ap.add_argument("--images", default="imagenet_dev")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    require_assets()
    proto, model = model_paths(args.model)
    net = load_net(proto, model)
    engine = Engine(convert_net(net))
    cv = opencv_net(proto, model)
    cv.enableFusion(True)
    items = labelled(args.images)[: args.limit]
    labels = np.array([i.label for i in items])
    output = net.outputs[0]
    ours, theirs = [], []
    for batch in batches_of(items, params_for(args.model), next(iter(net.inputs.values())), 25):
        ours.append(engine.run(batch, [output])[output])
        cv.setInput(batch)
        theirs.append(cv.forward(output))
    ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    same = (ours.reshape(len(items), -1).argmax(1) == theirs.reshape(len(items), -1).argmax(1)).mean()
    print(f"{args.model} on {len(items)} labelled images of {args.images}: "
          f"top-1 int8tune {100 * top1(ours, labels):.2f} %, "
          f"OpenCV {100 * top1(theirs, labels):.2f} %; same top-1 class on {100 * same:.2f} % of images; "
          f"largest output difference {np.abs(ours.reshape(theirs.shape) - theirs).max():.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
