#include "quantppl/error.h"
