"""`verisparse profile`: latency, memory and output bytes of exported models on the machine
it runs on (a Raspberry Pi is the target). Imports only numpy, click and the runtimes, so it
works in the light install (`pip install verisparse`)."""
