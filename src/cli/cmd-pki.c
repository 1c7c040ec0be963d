/* ferry pki — the CA and certificates. */
#include "cli.h"
#include "pki.h"

int
ferry_cmd_pki (int argc, char **argv)
{
  g_autofree char *dir = NULL;
  g_autofree char *ca_name = NULL;
  g_auto (GStrv) addresses = NULL;
  gboolean force = FALSE;
  GOptionEntry entries[] = {
    { "dir", 0, 0, G_OPTION_ARG_FILENAME, &dir,
      "PKI directory (default $FERRY_PKI_DIR or ~/.config/ferry/pki)", "DIR" },
    { "force", 0, 0, G_OPTION_ARG_NONE, &force, "init: replace an existing CA", NULL },
    { "ca-name", 0, 0, G_OPTION_ARG_STRING, &ca_name, "init: the CA's name", "NAME" },
    { "address", 'a', 0, G_OPTION_ARG_STRING_ARRAY, &addresses,
      "issue-host: an IP address or DNS name the host is reached by (repeatable)", "ADDR" },
    { NULL }
  };
  g_autoptr (GError) error = NULL;

  if (!ferry_cli_parse ("init | issue-host HOST | issue-client NAME", "Certificates for ferry.",
                        entries, &argc, &argv))
    return 2;
  if (argc < 2)
    {
      g_printerr ("ferry pki: say init, issue-host HOST or issue-client NAME\n");
      return 2;
    }
  if (dir == NULL)
    dir = ferry_pki_default_dir ();

  const char *verb = argv[1];
  if (g_str_equal (verb, "init") && argc == 2)
    {
      if (!ferry_pki_init (dir, ca_name, force, &error))
        return ferry_cli_fail (error);
      g_print ("CA created in %s\n", dir);
      return 0;
    }
  if (g_str_equal (verb, "issue-host") && argc == 3)
    {
      g_autofree char *out = ferry_pki_issue_host (dir, argv[2], (const char *const *) addresses, &error);
      if (out == NULL)
        return ferry_cli_fail (error);
      g_print ("host certificate for %s in %s (copy it to the host as ferryd's --tls-dir)\n",
               argv[2], out);
      return 0;
    }
  if (g_str_equal (verb, "issue-client") && argc == 3)
    {
      g_autofree char *out = ferry_pki_issue_client (dir, argv[2], &error);
      if (out == NULL)
        return ferry_cli_fail (error);
      g_print ("client certificate for %s in %s (use it with --tls-dir or FERRY_TLS_DIR)\n",
               argv[2], out);
      return 0;
    }
  g_printerr ("ferry pki: usage: pki init | pki issue-host HOST [--address ADDR]... | pki issue-client NAME\n");
  return 2;
}
