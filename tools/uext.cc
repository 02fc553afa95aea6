// Placeholder until the command-line tool lands (being written now).
int main() { return 1; }
