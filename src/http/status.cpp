#include "http/status.h"

namespace nebula::http {

ErrorCode error_code_of(int status) {
  switch (status) {
    case 400: return ErrorCode::InvalidArgument;
    case 401: return ErrorCode::Unauthenticated;
    case 403: return ErrorCode::PermissionDenied;
    case 404: return ErrorCode::NotFound;
    case 409: return ErrorCode::AlreadyExists;
    case 413: return ErrorCode::TooLarge;
    case 429: return ErrorCode::ResourceExhausted;
    case 504: return ErrorCode::Timeout;
    default: return ErrorCode::Unavailable;
  }
}

}  // namespace nebula::http
