/* libFuzzer harness for the VM spec parser.
 *
 * Specs arrive from users and over the API, so every input must either be
 * rejected with an error or yield a spec whose canonical JSON parses back
 * (as a tree and as text) to an equal spec.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry-error.h"
#include "vmspec.h"

int LLVMFuzzerInitialize (int *argc, char ***argv);
int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

static void
fail (const char *what, const GError *error)
{
  fprintf (stderr, "fuzz-vmspec: %s%s%s\n", what, error != NULL ? ": " : "",
           error != NULL ? error->message : "");
  abort ();
}

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  /* A g_return_if_fail tripping is a bug, not a rejected input. */
  g_log_set_always_fatal (G_LOG_LEVEL_CRITICAL | G_LOG_LEVEL_WARNING);
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (FerryVmSpec) spec = NULL;
  g_autoptr (JsonNode) node = NULL;
  g_autoptr (FerryVmSpec) from_tree = NULL;
  g_autoptr (FerryVmSpec) from_text = NULL;
  g_autoptr (FerryVmSpec) copy = NULL;
  g_autofree char *text = NULL;

  spec = ferry_vm_spec_parse ((const char *) data, size, &error);
  if (spec == NULL)
    {
      if (error == NULL || error->domain != FERRY_ERROR || error->message[0] == '\0')
        fail ("rejected input without a ferry error", error);
      return 0;
    }
  if (error != NULL)
    fail ("success with an error set", error);

  node = ferry_vm_spec_to_json (spec);
  from_tree = ferry_vm_spec_from_json (node, &error);
  if (from_tree == NULL)
    fail ("canonical JSON tree rejected", error);
  if (!ferry_vm_spec_equal (spec, from_tree))
    fail ("to_json -> from_json changed the spec", NULL);

  /* The stored form is text; it must stay within the input bound and read
   * back through the YAML path too. */
  text = ferry_vm_spec_to_json_string (spec);
  from_text = ferry_vm_spec_parse (text, strlen (text), &error);
  if (from_text == NULL)
    fail ("canonical JSON text rejected", error);
  if (!ferry_vm_spec_equal (spec, from_text))
    fail ("to_json_string -> parse changed the spec", NULL);

  copy = ferry_vm_spec_copy (spec);
  if (!ferry_vm_spec_equal (spec, copy))
    fail ("copy differs", NULL);
  return 0;
}
