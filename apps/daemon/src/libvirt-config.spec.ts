import { checkConfig, defaultConfig } from '@devgate/service';

// devgated's libvirt URIs: libvirt's own default, then the configured ones; bad entries are located.
describe('libvirt in the configuration', () => {
  it('defaults to libvirt convention: LIBVIRT_DEFAULT_URI, else qemu:///system', () => {
    expect(defaultConfig({}).libvirt).toEqual({ uris: ['qemu:///system'] });
    expect(defaultConfig({ LIBVIRT_DEFAULT_URI: 'qemu:///session' }).libvirt).toEqual({ uris: ['qemu:///session'] });
    expect(checkConfig('{}', 'f.json').config?.libvirt?.uris).toEqual([defaultConfig().libvirt!.uris[0]]);
  });

  it('adds the configured URIs after the default, or uses only them with defaultUri false', () => {
    const added = checkConfig('{"libvirt": {"uris": ["qemu+ssh://root@host/system"]}}', 'f.json');
    expect(added.issues).toEqual([]);
    expect(added.config?.libvirt?.uris).toEqual([defaultConfig().libvirt!.uris[0], 'qemu+ssh://root@host/system']);
    const only = checkConfig(
      '{"libvirt": {"defaultUri": false, "uris": ["qemu+tcp://127.0.0.1:16509/system", "xen:///system"]}}',
      'f.json',
    );
    expect(only.config?.libvirt?.uris).toEqual(['qemu+tcp://127.0.0.1:16509/system', 'xen:///system']);
  });

  it('locates what is wrong', () => {
    const text = '{\n  "libvirt": {"uris": ["not a uri"], "defaultURI": true, "defaultUri": "yes"}\n}';
    const { config, issues } = checkConfig(text, 'f.json');
    expect(config).toBeUndefined();
    expect(issues.map((i) => `${i.line}:${i.column} ${i.message}`)).toEqual([
      expect.stringMatching(/^2:\d+ unknown setting 'libvirt.defaultURI'$/),
      expect.stringMatching(/^2:\d+ libvirt.uris: 'not a uri' is not a libvirt URI/),
      expect.stringMatching(/^2:\d+ libvirt.defaultUri must be true or false$/),
    ]);
    expect(checkConfig('{"libvirt": ["qemu:///system"]}', 'f.json').issues[0].message).toContain(
      'libvirt must be an object',
    );
  });
});
