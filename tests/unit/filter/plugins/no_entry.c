/* A shared object that is not a petrel plugin. */
int petrel_test_something_else(void) { return 42; }
