"""Pure TensorFlow maths of tf_gibbs: no Keras in here."""

from tf_gibbs.core.gibbs import HAMILTONIANS
from tf_gibbs.core.gibbs import Hamiltonian
from tf_gibbs.core.gibbs import UnstructuredHamiltonian
from tf_gibbs.core.gibbs import get_hamiltonian
from tf_gibbs.core.gibbs import sample_unstructured_mask
from tf_gibbs.core.gibbs import unstructured_keep_probability
from tf_gibbs.core.ranking import exact_count_keep_mask
from tf_gibbs.core.ranking import pruned_count
from tf_gibbs.core.ranking import quantile
