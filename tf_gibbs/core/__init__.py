"""Pure TensorFlow maths of tf_gibbs: no Keras in here."""

from tf_gibbs.core.gibbs import HAMILTONIANS
from tf_gibbs.core.gibbs import Hamiltonian
from tf_gibbs.core.gibbs import UnstructuredHamiltonian
from tf_gibbs.core.gibbs import get_hamiltonian
from tf_gibbs.core.gibbs import sample_unstructured_mask
from tf_gibbs.core.gibbs import unstructured_keep_probability
from tf_gibbs.core.ranking import exact_count_keep_mask
from tf_gibbs.core.ranking import kth_smallest
from tf_gibbs.core.ranking import pruned_count
from tf_gibbs.core.ranking import quantile

__all__ = [
    "HAMILTONIANS",
    "Hamiltonian",
    "UnstructuredHamiltonian",
    "exact_count_keep_mask",
    "get_hamiltonian",
    "kth_smallest",
    "pruned_count",
    "quantile",
    "sample_unstructured_mask",
    "unstructured_keep_probability",
]
