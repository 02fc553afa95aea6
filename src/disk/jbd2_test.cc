#include "disk/jbd2.h"
#include <gtest/gtest.h>
