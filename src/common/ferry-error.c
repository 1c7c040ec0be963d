#include "ferry-error.h"

G_DEFINE_QUARK (ferry-error-quark, ferry_error)

static const struct {
  FerryErrorCode code;
  const char *name;
  guint http_status;
} error_table[] = {
  { FERRY_ERROR_FAILED, "failed", 500 },
  { FERRY_ERROR_INVALID_ARGUMENT, "invalid-argument", 400 },
  { FERRY_ERROR_NOT_FOUND, "not-found", 404 },
  { FERRY_ERROR_CONFLICT, "conflict", 409 },
  { FERRY_ERROR_TOO_LARGE, "too-large", 413 },
  { FERRY_ERROR_UNAVAILABLE, "unavailable", 503 },
  { FERRY_ERROR_PERMISSION, "permission", 403 },
  { FERRY_ERROR_TIMEOUT, "timeout", 504 },
  { FERRY_ERROR_QEMU, "qemu", 502 },
  { FERRY_ERROR_NO_SPACE, "no-space", 507 },
};

guint
ferry_error_http_status (const GError *error)
{
  if (error == NULL || error->domain != FERRY_ERROR)
    return 500;
  for (gsize i = 0; i < G_N_ELEMENTS (error_table); i++)
    if (error_table[i].code == (FerryErrorCode) error->code)
      return error_table[i].http_status;
  return 500;
}

FerryErrorCode
ferry_error_code_from_http_status (guint status)
{
  for (gsize i = 0; i < G_N_ELEMENTS (error_table); i++)
    if (error_table[i].http_status == status)
      return error_table[i].code;
  return FERRY_ERROR_FAILED;
}

const char *
ferry_error_code_to_string (FerryErrorCode code)
{
  for (gsize i = 0; i < G_N_ELEMENTS (error_table); i++)
    if (error_table[i].code == code)
      return error_table[i].name;
  return "failed";
}

FerryErrorCode
ferry_error_code_from_string (const char *name)
{
  for (gsize i = 0; name != NULL && i < G_N_ELEMENTS (error_table); i++)
    if (g_str_equal (error_table[i].name, name))
      return error_table[i].code;
  return FERRY_ERROR_FAILED;
}
