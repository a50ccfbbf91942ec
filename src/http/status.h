#pragma once
// The error code an HTTP status stands for, for clients of Nebula's API (the CLI, the MCP
// tools): the inverse, as far as it goes, of the server's one map from codes to statuses.
#include "common/result.h"

namespace nebula::http {

// 400 InvalidArgument, 401 Unauthenticated, 403 PermissionDenied, 404 NotFound, 409
// AlreadyExists, 413 TooLarge, 429 ResourceExhausted, 504 Timeout; any other Unavailable.
ErrorCode error_code_of(int status);

}  // namespace nebula::http
