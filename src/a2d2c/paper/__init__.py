"""The paper's published figures and the tables that compare our counts with them.

* :mod:`a2d2c.paper.figures`: the paper's rows (parameters, MAdds, accuracies) as data.
* :mod:`a2d2c.paper.table`: builds each row's model, counts it and renders the comparison
  (``a2d2c profile --paper``).
"""
