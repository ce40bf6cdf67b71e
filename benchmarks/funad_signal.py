r"""How much signal do FUN-AD's pseudo-labels start from? (a diagnostic)

FUN-AD's IRMB labels a training patch anomalous when its nearest-neighbour
distance to a bank of (likely normal) patches is large. Before any training the
adaptor is close to a random linear map, so the labels inherit the quality of
the raw feature distances. This script measures that ceiling on a dataset's
contaminated training set: the image AUROC (true labels, transductive) of
the max-over-patches distance to the nearest patch of *another* training
image, for the token layouts FUN-AD and PatchCore use.

  python benchmarks/funad_signal.py --dataset=magnetic_tile --contamination=0.1 \
      --image_size=112
"""

import importlib.util
import os

from absl import app
from absl import flags
import numpy as np
from sklearn import metrics

import _shared  # pylint: disable=g-import-not-at-top,wrong-import-position
_shared.use_shared_data()

from dicofun import features  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun import protocol  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.methods.patchcore import method as patchcore  # pylint: disable=g-import-not-at-top,wrong-import-position

_DATASET = flags.DEFINE_string("dataset", "magnetic_tile", "Dataset.")
_CONT = flags.DEFINE_float("contamination", 0.1, "Contamination ratio.")
_SIZE = flags.DEFINE_integer("image_size", 112, "Input size.")


def _config():
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", f"funad_{_DATASET.value}.py")
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(
      f"contamination={_CONT.value},image_size={_SIZE.value}")


def _transductive_auroc(feats: np.ndarray, labels: np.ndarray) -> float:
  state = {"bank": feats.reshape(-1, feats.shape[-1]),
           "source": np.repeat(np.arange(len(feats)), np.prod(feats.shape[1:3]))}
  patch = patchcore.score(state, feats, exclude_source=np.arange(len(feats)))
  return float(metrics.roc_auc_score(labels, patch.reshape(len(feats), -1).max(1)))


def main(argv):
  del argv
  config = _config()
  data = protocol.prepare_data(config, "/tmp/dicofun_signal")
  labels = np.array([r.label for r in data.train])
  tokens = features.load_features(config, data.train, layout="tokens")
  d = tokens.shape[-1] // 2
  rows = [
      ("[CLS ‖ patch] (FUN-AD input)", tokens),
      ("patch token only", tokens[..., d:]),
      ("PatchCore layout (3×3 averaged patch tokens)",
       features.load_features(config, data.train, layout="patchcore")),
  ]
  print(f"Training set: {len(labels)} images, {labels.sum()} anomalous "
        f"(contamination {_CONT.value}), input {_SIZE.value}, "
        f"{config.backbone.name} block {config.backbone.layer}\n")
  print("| features | transductive image AUROC of leave-own-image-out NN distance |")
  print("|---|---|")
  for name, f in rows:
    print(f"| {name} | {_transductive_auroc(f, labels):.4f} |")


if __name__ == "__main__":
  app.run(main)
