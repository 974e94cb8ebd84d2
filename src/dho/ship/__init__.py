"""A trained student on its way to users: loading and predicting (:class:`DHOClassifier`),
scoring a checkpoint, exporting one graph with its model card, importing the DHO authors' files."""
