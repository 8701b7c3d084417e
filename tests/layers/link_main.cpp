// Linked with one layer's library whole (every object, used or not) and only the layers it depends on: if anything
// in that layer calls into a layer above it, this program fails to link. Running it checks nothing more.
int main() { return 0; }
