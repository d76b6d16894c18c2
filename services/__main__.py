"""`python -m memcached_operator`: the same command line as the `memcached-operator` script."""

from memcached_operator.cli import console

console()
